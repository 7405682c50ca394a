"""What a job produced: events, metrics, checkpoints, and the artifacts in its folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sqlmodel import Session, select

from mftd.errors import InvalidValueError, NotFoundError
from mftd.protocol import CHECKPOINTS_DIRNAME
from mftd.registry.jobs import get_job
from mftd.settings import Settings
from mftd.tables import Checkpoint, Event, Metric


def list_events(session: Session, job_id: int, after_id: int = 0, limit: int = 1000) -> list[Event]:
    """The job's events with an id above ``after_id``, oldest first."""
    get_job(session, job_id)
    query = select(Event).where(Event.job_id == job_id, Event.id > after_id).order_by(Event.id).limit(limit)
    return list(session.exec(query).all())


def list_metrics(session: Session, job_id: int, split: Optional[str] = None) -> list[Metric]:
    """The job's logged steps, oldest first (optionally only ``train`` or ``eval``)."""
    get_job(session, job_id)
    query = select(Metric).where(Metric.job_id == job_id)
    if split is not None:
        query = query.where(Metric.split == split)
    return list(session.exec(query.order_by(Metric.step, Metric.id)).all())


def list_checkpoints(session: Session, job_id: int) -> list[Checkpoint]:
    """The job's recorded checkpoints, oldest first."""
    get_job(session, job_id)
    return list(session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all())


@dataclass(frozen=True)
class Artifact:
    """A top-level file or folder in a job's folder (adapter/, model/, config.json, worker.log, ...)."""

    path: str
    is_folder: bool
    size_bytes: int


def _is_hidden_artifact(name: str) -> bool:
    return name == CHECKPOINTS_DIRNAME or name.startswith(".") or name.endswith(".tmp")


def _folder_size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file() and not file.is_symlink())


def list_artifacts(session: Session, settings: Settings, job_id: int) -> list[Artifact]:
    """The job's outputs: top-level files and folders of ``jobs/<id>/`` except checkpoints and temporary files."""
    get_job(session, job_id)
    job_dir = settings.job_dir(job_id)
    if not job_dir.is_dir():
        return []
    artifacts = []
    for entry in sorted(job_dir.iterdir()):
        if _is_hidden_artifact(entry.name) or entry.is_symlink():
            continue
        if entry.is_dir():
            artifacts.append(Artifact(entry.name, True, _folder_size(entry)))
        elif entry.is_file():
            artifacts.append(Artifact(entry.name, False, entry.stat().st_size))
    return artifacts


def artifact_path(session: Session, settings: Settings, job_id: int, relative_path: str) -> Path:
    """The file or folder ``relative_path`` inside job ``job_id``'s folder.

    Raises:
        NotFoundError: no such job or artifact.
        InvalidValueError: the path leads outside the job's folder, or into its checkpoints.
    """
    get_job(session, job_id)
    job_dir = settings.job_dir(job_id).resolve()
    outside = InvalidValueError(
        "artifact_path", f"artifact path {relative_path!r} is not inside job {job_id}'s folder.", location="path"
    )
    if "\x00" in relative_path or Path(relative_path).is_absolute() or ".." in Path(relative_path).parts:
        raise outside
    try:
        target = (job_dir / relative_path).resolve()
    except (ValueError, OSError) as error:
        raise outside from error
    if not target.is_relative_to(job_dir) or target == job_dir:
        raise outside
    if _is_hidden_artifact(target.relative_to(job_dir).parts[0]):
        raise InvalidValueError(
            "artifact_path", f"{relative_path!r} is not an artifact; checkpoints and temporary files are not served.", location="path"
        )
    if not target.exists():
        names = ", ".join(artifact.path for artifact in list_artifacts(session, settings, job_id)) or "none yet"
        raise NotFoundError(f"job {job_id} has no artifact {relative_path!r}. Its artifacts: {names}.")
    return target
