"""Use a finished job's result from the daemon without loading torch: generate text and export a merged model.

Both run a child process (``python -m jobs.generate --json``, ``python -m jobs.export``) with a
time limit and read its last JSON line; the daemon only waits for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from mftd.errors import ConflictError, MftdError
from mftd.jobconfig import ADAPTER_METHODS
from mftd.protocol import ADAPTER_DIRNAME, FULL_MODEL_DIRNAME
from mftd.registry.lookup import get_row
from mftd.settings import Settings
from mftd.status import JobStatus
from mftd.tables import Job, Model

EXPORT_DIRNAME = "export"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class HelperProcessError(MftdError):
    """A generate or export child process failed or ran out of time."""


@dataclass(frozen=True)
class JobResult:
    """Where a succeeded job's base model and trained weights are."""

    job_dir: Path
    base_model: Path
    adapter: Path | None  # None for full fine-tuning
    full_model: Path | None


def job_result(session: Session, settings: Settings, job_id: int) -> JobResult:
    """The result folders of job ``job_id``.

    Raises:
        NotFoundError: no such job.
        ConflictError: the job has not succeeded, or its result folder is gone.
    """
    job: Job = get_row(session, Job, job_id, "job")
    if JobStatus(job.status) != JobStatus.SUCCEEDED:
        raise ConflictError(f"job {job_id} is {JobStatus(job.status).value}; only a succeeded job has weights to use.")
    model: Model = get_row(session, Model, job.model_id, "model")
    method = json.loads(job.config_json).get("method", "lora")
    job_dir = settings.job_dir(job_id)
    folder = job_dir / (ADAPTER_DIRNAME if method in ADAPTER_METHODS else FULL_MODEL_DIRNAME)
    if not folder.is_dir():
        raise ConflictError(f"job {job_id}'s result folder {folder} is missing; run the job again.")
    if method in ADAPTER_METHODS:
        return JobResult(job_dir, Path(model.path), folder, None)
    return JobResult(job_dir, Path(model.path), None, folder)


def generate_text(result: JobResult, prompt: str, max_new_tokens: int, compare: bool, python: str, timeout_seconds: float) -> dict[str, Any]:
    """Greedy answer to ``prompt`` with the job's weights (and the base model's, if ``compare``)."""
    command = ["-m", "jobs.generate", "--json", "--prompt", prompt, "--max-new-tokens", str(max_new_tokens)]
    if result.adapter is not None:
        command += ["--model", str(result.base_model), "--adapter", str(result.adapter)]
        if compare:
            command.append("--compare")
    else:
        command += ["--model", str(result.full_model)]
    return run_json_child(python, command, timeout_seconds, "generate")


def export_merged(result: JobResult, python: str, timeout_seconds: float) -> dict[str, Any]:
    """Merge the job's adapter into its base model as ``jobs/<id>/export/``; a full fine-tune is already ``model/``."""
    if result.adapter is None:
        return {"path": str(result.full_model), "artifact": FULL_MODEL_DIRNAME, "merged": False}
    out_dir = result.job_dir / EXPORT_DIRNAME
    command = ["-m", "jobs.export", "--model", str(result.base_model), "--adapter", str(result.adapter), "--out", str(out_dir)]
    answer = run_json_child(python, command, timeout_seconds, "export")
    return {"path": answer["path"], "artifact": EXPORT_DIRNAME, "merged": True, "num_parameters": answer.get("num_parameters")}


def run_json_child(python: str, arguments: list[str], timeout_seconds: float, what: str) -> dict[str, Any]:
    """Run ``python ARGUMENTS`` (a jobs module) and return its last JSON line.

    Raises:
        HelperProcessError: it failed, printed an error, or ran out of time.
    """
    try:
        finished = subprocess.run(
            [python or sys.executable, *arguments], capture_output=True, text=True, timeout=timeout_seconds, env=_child_env(), cwd=PROJECT_ROOT
        )
    except subprocess.TimeoutExpired as error:
        raise HelperProcessError(f"{what} took longer than {timeout_seconds:g} s and was stopped; try fewer tokens.") from error
    lines = [line for line in finished.stdout.splitlines() if line.strip().startswith("{")]
    answer = json.loads(lines[-1]) if lines else {}
    if finished.returncode != 0 or "error" in answer:
        detail = answer.get("error") or (finished.stderr.strip().splitlines() or ["no output"])[-1]
        raise HelperProcessError(f"{what} failed (exit code {finished.returncode}): {detail}")
    return answer


def _child_env() -> dict[str, str]:
    env = dict(os.environ, TQDM_DISABLE="1")
    if str(PROJECT_ROOT) not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(PROJECT_ROOT)]))
    return env
