"""Jobs: create one from a model, a dataset and a config; list, pause, resume, cancel and delete them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from sqlalchemy import delete as sql_delete
from sqlalchemy import func
from sqlmodel import Session, col, select

from mftd.errors import ConflictError, InvalidValueError, NotFoundError
from mftd.jobconfig import JobConfig
from mftd.cpu import has_fast_bfloat16
from mftd.memory_plan import MemoryPlan, ModelShape, does_not_fit_message, plan_memory, plan_request
from mftd.modelinfo import CONFIG_FILENAME
from mftd.protocol import users_allocator
from mftd.registry.lookup import Reference, get_row, resolve
from mftd.settings import Settings
from mftd.status import JobStatus, set_status
from mftd.tables import Checkpoint, Dataset, Event, Job, Metric, Model
from mftd.timeutil import utcnow


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
    model_row: Model = resolve(session, Model, model, "model")
    dataset_row: Dataset = resolve(session, Dataset, dataset, "dataset")
    if model_row.status != "ready":
        raise InvalidValueError(
            "model", f"model {model_row.name} is {model_row.status} ({model_row.status_message}); wait for its import or pick a ready model."
        )
    if "max_seq_len" not in config.model_fields_set and config.max_seq_len > model_row.context_length:
        # The default must not refuse a small-context model; an explicit value must fit.
        config = config.model_copy(update={"max_seq_len": model_row.context_length})
    _check_job_fits(config, model_row, dataset_row)
    _check_validation_dataset(session, config)
    plan = _plan_memory(config, model_row, settings)
    job = Job(
        name=name,
        model_id=model_row.id,
        dataset_id=dataset_row.id,
        priority=priority,
        config_json=config.model_dump_json(),
        memory_plan_json=json.dumps(plan.to_json()) if plan else None,
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
    if dataset_row.format == "messages" and not model_row.has_chat_template:
        session.add(
            Event(
                job_id=job.id,
                level="warning",
                kind="created",
                message=f"model {model_row.name} has no chat template: dataset {dataset_row.name}'s conversations will use the simple "
                "'role: content' fallback template, which is saved with the adapter",
            )
        )
    session.commit()
    session.refresh(job)
    return job


def _plan_memory(config: JobConfig, model: Model, settings: Settings) -> Optional[MemoryPlan]:
    """The job's memory plan for examples as long as ``max_seq_len`` (the worker plans again for the real longest one).

    None when config.json lacks the sizes the estimate needs: the worker's plan, from the loaded
    config with its defaults, is then the first one.

    Raises:
        InvalidValueError: nothing fits the budget; the message has the estimate and what would fit.
    """
    try:
        model_config = json.loads((Path(model.path) / CONFIG_FILENAME).read_text())
    except (OSError, ValueError) as error:
        raise InvalidValueError("model", f"cannot read the config.json of model {model.name} in {model.path} ({error}); register it again.") from error
    try:
        shape = ModelShape.from_config_dict(model_config, model.num_parameters or None)
    except ValueError:
        return None
    request = plan_request(
        config, config.memory_budget_mb or settings.default_memory_budget_mb, config.max_seq_len, prefer_bfloat16=has_fast_bfloat16(),
        allocator=users_allocator(os.environ),  # the daemon's environment is its workers' (the user's own threshold wins)
    )
    plan = plan_memory(shape, request)
    if not plan.fits:
        raise InvalidValueError("memory_budget_mb", does_not_fit_message(shape, request, plan))
    return plan


def _check_validation_dataset(session: Session, config: JobConfig) -> None:
    if config.validation_dataset is not None:
        try:
            resolve(session, Dataset, config.validation_dataset, "dataset")
        except NotFoundError as error:
            raise InvalidValueError("validation_dataset", f"validation_dataset: {error}") from error
    elif config.eval_every_steps is not None:
        raise InvalidValueError("eval_every_steps", "eval_every_steps is set but validation_dataset is not; name a registered dataset to evaluate on.")


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
    return get_row(session, Job, job_id, "job")


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
