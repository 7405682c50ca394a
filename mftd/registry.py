"""The daemon-core operations on models, datasets and jobs, shared by the HTTP API, the CLI and tests.

Every function takes a session (and the settings where files are involved) and raises
``mftd.errors``; none knows about HTTP.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Union

from sqlalchemy import delete as sql_delete
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from mftd.datasets import DatasetInfo, validate_jsonl
from mftd.errors import ConflictError, InvalidValueError, NotFoundError
from mftd.jobconfig import JobConfig
from mftd.modelinfo import inspect_model_folder
from mftd.protocol import CHECKPOINTS_DIRNAME
from mftd.settings import Settings
from mftd.status import JobStatus, set_status
from mftd.tables import Checkpoint, Dataset, Event, Job, Metric, Model
from mftd.timeutil import utcnow

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
COPY_CHUNK_BYTES = 1 << 20
MAX_NAMES_IN_MESSAGE = 20

Reference = Union[int, str]
"""A model or dataset given by id, or by name."""


# --- names and lookups -------------------------------------------------------------------------


def check_name(name: str, field: str = "name") -> str:
    """``name`` if it is usable as a model or dataset name (and as a file name).

    Raises:
        InvalidValueError: it is empty, too long, or has characters other than letters, digits, ``.``, ``_`` and ``-``.
    """
    if not re.match(NAME_PATTERN, name or ""):
        raise InvalidValueError(
            field,
            f"{field} {name!r} is not usable: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return name


def _get_row(session: Session, table: type[SQLModel], row_id: int, what: str):
    row = session.get(table, row_id)
    if row is None:
        raise NotFoundError(f"{what} {row_id} does not exist. {_existing(session, table, what)}")
    return row


def _existing(session: Session, table: type[SQLModel], what: str) -> str:
    rows = session.exec(select(table).order_by(table.id).limit(MAX_NAMES_IN_MESSAGE + 1)).all()
    if not rows:
        return f"No {what}s are registered."
    named = [f"{row.id} ({row.name})" if getattr(row, "name", None) else str(row.id) for row in rows]
    more = " and more" if len(named) > MAX_NAMES_IN_MESSAGE else ""
    return f"Existing {what}s: {', '.join(named[:MAX_NAMES_IN_MESSAGE])}{more}."


def _resolve(session: Session, table: type[SQLModel], reference: Reference, what: str):
    """A row by id (an int, or digits that are not a name) or by name."""
    if isinstance(reference, int) and not isinstance(reference, bool):
        return _get_row(session, table, reference, what)
    row = session.exec(select(table).where(table.name == reference)).first()
    if row is None and str(reference).isdigit():
        row = session.get(table, int(reference))
    if row is None:
        raise NotFoundError(f"no {what} has the name or id {reference!r}. {_existing(session, table, what)}")
    return row


def _check_name_free(session: Session, table: type[SQLModel], name: str, what: str) -> None:
    taken = session.exec(select(table).where(table.name == name)).first()
    if taken is not None:
        raise ConflictError(f"a {what} named {name!r} already exists (id {taken.id}); pick another name or delete it first.")


def _insert(session: Session, row: SQLModel, what: str):
    session.add(row)
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise ConflictError(f"a {what} named {getattr(row, 'name', '')!r} already exists; pick another name.") from error
    session.refresh(row)
    return row


def _jobs_using(session: Session, column, row_id: int) -> tuple[list[Job], list[Job]]:
    """(unfinished, finished) jobs whose ``column`` is ``row_id``."""
    jobs = session.exec(select(Job).where(column == row_id).order_by(Job.id)).all()
    unfinished = [job for job in jobs if not JobStatus(job.status).is_final]
    finished = [job for job in jobs if JobStatus(job.status).is_final]
    return unfinished, finished


def _check_unused(session: Session, column, row_id: int, what: str) -> None:
    unfinished, finished = _jobs_using(session, column, row_id)
    if unfinished:
        listed = ", ".join(f"{job.id} ({JobStatus(job.status).value})" for job in unfinished)
        raise ConflictError(f"{what} {row_id} is used by unfinished jobs {listed}; cancel them first.")
    if finished:
        listed = ", ".join(str(job.id) for job in finished)
        raise ConflictError(f"{what} {row_id} is referenced by finished jobs {listed}; delete those jobs first.")


# --- models ------------------------------------------------------------------------------------


def register_model(session: Session, settings: Settings, name: str, path: str | Path) -> Model:
    """Inspect a local Hugging Face folder and register it under ``name``.

    Raises:
        InvalidValueError: the name is not usable.
        ConflictError: the name is taken.
        ModelValidationError: the folder cannot be fine-tuned by mftd (the message says why and how to fix it).
    """
    check_name(name)
    _check_name_free(session, Model, name, "model")
    info = inspect_model_folder(path)
    model = Model(
        name=name,
        path=info.path,
        architecture=info.architecture,
        model_type=info.model_type,
        num_parameters=info.num_parameters,
        dtype=info.dtype,
        context_length=info.context_length,
        has_chat_template=info.has_chat_template,
    )
    return _insert(session, model, "model")


def list_models(session: Session, skip: int = 0, limit: int = 100) -> tuple[list[Model], int]:
    """A page of models, oldest first, and how many there are in all."""
    models = session.exec(select(Model).order_by(Model.id).offset(skip).limit(limit)).all()
    return list(models), session.exec(select(func.count()).select_from(Model)).one()


def get_model(session: Session, model_id: int) -> Model:
    return _get_row(session, Model, model_id, "model")


def delete_model(session: Session, model_id: int) -> None:
    """Forget a model (its folder stays where it is).

    Raises:
        NotFoundError: no such model.
        ConflictError: jobs still reference it.
    """
    model = get_model(session, model_id)
    _check_unused(session, Job.model_id, model_id, "model")
    session.delete(model)
    session.commit()


# --- datasets ----------------------------------------------------------------------------------


def register_dataset(
    session: Session,
    settings: Settings,
    name: str,
    *,
    source_path: Optional[str | Path] = None,
    upload: Optional[bytes | BinaryIO] = None,
    declared_format: str = "auto",
) -> Dataset:
    """Validate a JSONL dataset and register it under ``name``.

    An upload is validated in a temporary file and only then moved to
    ``<datasets dir>/<name>.jsonl``, so a bad upload leaves nothing behind. A local file is
    validated and used where it is.

    Args:
        source_path: a local JSONL file (exclusive with ``upload``).
        upload: the file's bytes, or a binary stream to copy them from.
        declared_format: ``auto`` to detect the format, or the format every line must have.

    Raises:
        InvalidValueError: the name is not usable, or neither or both of source_path and upload were given.
        ConflictError: the name is taken.
        DatasetValidationError: the file has bad lines (all listed in ``problems``).
    """
    check_name(name)
    if (source_path is None) == (upload is None):
        raise InvalidValueError("file", "give either a file to upload or the path of a local file, not both and not neither.")
    _check_name_free(session, Dataset, name, "dataset")
    if source_path is not None:
        info = validate_jsonl(source_path, declared_format)
        return _insert_dataset(session, name, info)
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    target = settings.datasets_dir / f"{name}.jsonl"
    temp_path = _write_upload(settings.datasets_dir, upload)
    try:
        info = validate_jsonl(temp_path, declared_format)
        os.replace(temp_path, target)
    finally:
        if temp_path.exists():
            temp_path.unlink()
    info = dataclasses.replace(info, path=str(target.resolve()))
    try:
        return _insert_dataset(session, name, info)
    except ConflictError:
        target.unlink(missing_ok=True)
        raise


def _write_upload(folder: Path, upload: bytes | BinaryIO) -> Path:
    descriptor, temp_name = tempfile.mkstemp(prefix=".upload-", suffix=".jsonl.tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as file:
            if isinstance(upload, (bytes, bytearray, memoryview)):
                file.write(upload)
            else:
                shutil.copyfileobj(upload, file, COPY_CHUNK_BYTES)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(temp_name)
        raise
    return Path(temp_name)


def _insert_dataset(session: Session, name: str, info: DatasetInfo) -> Dataset:
    dataset = Dataset(
        name=name,
        path=info.path,
        format=info.format,
        num_examples=info.num_examples,
        size_bytes=info.size_bytes,
        longest_example_chars=info.longest_example_chars,
    )
    return _insert(session, dataset, "dataset")


def list_datasets(session: Session, skip: int = 0, limit: int = 100) -> tuple[list[Dataset], int]:
    """A page of datasets, oldest first, and how many there are in all."""
    datasets = session.exec(select(Dataset).order_by(Dataset.id).offset(skip).limit(limit)).all()
    return list(datasets), session.exec(select(func.count()).select_from(Dataset)).one()


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    return _get_row(session, Dataset, dataset_id, "dataset")


def delete_dataset(session: Session, settings: Settings, dataset_id: int) -> None:
    """Forget a dataset; an uploaded file is deleted, a file registered by path is left alone.

    Raises:
        NotFoundError: no such dataset.
        ConflictError: jobs still reference it.
    """
    dataset = get_dataset(session, dataset_id)
    _check_unused(session, Job.dataset_id, dataset_id, "dataset")
    session.delete(dataset)
    session.commit()
    file = Path(dataset.path)
    if file.parent.resolve() == settings.datasets_dir.resolve():
        file.unlink(missing_ok=True)


# --- jobs --------------------------------------------------------------------------------------


def create_job(
    session: Session,
    settings: Settings,
    model: Reference,
    dataset: Reference,
    config: JobConfig,
    name: Optional[str] = None,
    priority: int = 0,
) -> Job:
    """Queue a fine-tuning job of ``model`` on ``dataset`` (each by id or name).

    A ``max_seq_len`` left unset in ``config`` is capped at the model's context length.

    Raises:
        NotFoundError: the model or dataset does not exist (the message lists those that do).
        InvalidValueError: the config does not fit the model or dataset (names the field).
    """
    model_row: Model = _resolve(session, Model, model, "model")
    dataset_row: Dataset = _resolve(session, Dataset, dataset, "dataset")
    if "max_seq_len" not in config.model_fields_set and config.max_seq_len > model_row.context_length:
        # The default must not refuse a small-context model; an explicit value must fit.
        config = config.model_copy(update={"max_seq_len": model_row.context_length})
    _check_job_fits(config, model_row, dataset_row)
    job = Job(
        name=name,
        model_id=model_row.id,
        dataset_id=dataset_row.id,
        priority=priority,
        config_json=config.model_dump_json(),
    )
    session.add(job)
    session.flush()
    session.add(
        Event(
            job_id=job.id,
            kind="created",
            message=f"queued: {config.method} fine-tuning of model {model_row.name} on dataset {dataset_row.name}",
        )
    )
    session.commit()
    session.refresh(job)
    return job


def _check_job_fits(config: JobConfig, model: Model, dataset: Dataset) -> None:
    if config.max_seq_len > model.context_length:
        raise InvalidValueError(
            "max_seq_len",
            f"max_seq_len {config.max_seq_len} is above the context length of model {model.name} "
            f"({model.context_length}); use at most {model.context_length}.",
        )
    if config.dataset_format != "auto" and config.dataset_format != dataset.format:
        raise InvalidValueError(
            "dataset_format",
            f"dataset_format is {config.dataset_format}, but dataset {dataset.name} is in {dataset.format} format; "
            "leave dataset_format as auto or pick a matching dataset.",
        )
    if dataset.format == "messages" and not model.has_chat_template:
        raise InvalidValueError(
            "dataset",
            f"dataset {dataset.name} holds chat messages, but model {model.name} has no chat template to format them; "
            "use a chat model, or a text or prompt_completion dataset.",
        )


def list_jobs(
    session: Session, status: Optional[JobStatus] = None, skip: int = 0, limit: int = 100
) -> tuple[list[Job], int]:
    """A page of jobs, newest first (optionally only those in ``status``), and how many match in all."""
    query = select(Job)
    count_query = select(func.count()).select_from(Job)
    if status is not None:
        query = query.where(Job.status == status)
        count_query = count_query.where(Job.status == status)
    jobs = session.exec(query.order_by(col(Job.id).desc()).offset(skip).limit(limit)).all()
    return list(jobs), session.exec(count_query).one()


def get_job(session: Session, job_id: int) -> Job:
    return _get_row(session, Job, job_id, "job")


def job_config(job: Job) -> JobConfig:
    return JobConfig.model_validate_json(job.config_json)


def _request_stop(session: Session, job: Job, request: str) -> Job:
    """Ask the supervisor to stop a running worker; it makes the job paused or cancelled once the worker exits."""
    if job.stop_request == request:
        return job
    job.stop_request = request
    job.updated_at = utcnow()
    session.add(job)
    session.add(
        Event(job_id=job.id, kind="stop_request", message=f"{request} requested; the worker checkpoints and stops")
    )
    session.commit()
    session.refresh(job)
    return job


def pause_job(session: Session, job_id: int) -> Job:
    """Pause a job: at once if it is not running, after the worker's checkpoint if it is.

    Raises:
        NotFoundError: no such job.
        InvalidTransitionError: the job cannot be paused (it is paused already, or finished).
        ConflictError: the running job is already being cancelled.
    """
    job = get_job(session, job_id)
    session.refresh(job)
    if job.status == JobStatus.RUNNING:
        if job.stop_request == "cancel":
            raise ConflictError(f"job {job_id} is being cancelled; it cannot be paused.")
        return _request_stop(session, job, "pause")
    set_status(session, job, JobStatus.PAUSED, "paused by the user")
    return job


def resume_job(session: Session, job_id: int) -> Job:
    """Put a paused job back in the queue.

    Raises:
        NotFoundError: no such job.
        InvalidTransitionError: the job is not paused.
    """
    job = get_job(session, job_id)
    session.refresh(job)
    set_status(session, job, JobStatus.QUEUED, "resumed by the user")
    return job


def cancel_job(session: Session, job_id: int) -> Job:
    """Cancel a job: at once if it is not running, after the worker stops if it is.

    Raises:
        NotFoundError: no such job.
        InvalidTransitionError: the job is already finished.
    """
    job = get_job(session, job_id)
    session.refresh(job)
    if job.status == JobStatus.RUNNING:
        return _request_stop(session, job, "cancel")
    set_status(session, job, JobStatus.CANCELLED, "cancelled by the user")
    return job


def delete_job(session: Session, settings: Settings, job_id: int) -> None:
    """Delete a finished job, its events, metrics, checkpoints and its folder.

    Raises:
        NotFoundError: no such job.
        ConflictError: the job is not finished.
    """
    job = get_job(session, job_id)
    status = JobStatus(job.status)
    if not status.is_final:
        raise ConflictError(
            f"job {job_id} is {status.value}; only finished jobs can be deleted. Cancel it first, then delete it."
        )
    for table in (Event, Metric, Checkpoint):
        session.exec(sql_delete(table).where(table.job_id == job_id))
    session.delete(job)
    session.commit()
    shutil.rmtree(settings.job_dir(job_id), ignore_errors=True)


# --- job outputs -------------------------------------------------------------------------------


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
    parts = Path(relative_path).parts
    target = (job_dir / relative_path).resolve()
    if Path(relative_path).is_absolute() or ".." in parts or not target.is_relative_to(job_dir) or target == job_dir:
        raise InvalidValueError("path", f"artifact path {relative_path!r} is not inside job {job_id}'s folder.")
    if _is_hidden_artifact(target.relative_to(job_dir).parts[0]):
        raise InvalidValueError("path", f"{relative_path!r} is not an artifact; checkpoints and temporary files are not served.")
    if not target.exists():
        names = ", ".join(artifact.path for artifact in list_artifacts(session, settings, job_id)) or "none yet"
        raise NotFoundError(f"job {job_id} has no artifact {relative_path!r}. Its artifacts: {names}.")
    return target
