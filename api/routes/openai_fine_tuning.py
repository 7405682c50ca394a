"""OpenAI-compatible fine-tuning jobs: create, list, retrieve, cancel, pause, resume, events and checkpoints.

Every job is an ordinary mftd job (``ftjob-7`` is ``/v1/jobs/7``); lists are newest first with
OpenAI's ``after`` cursor. The mapping of statuses and hyperparameters is in ``api.openai_mapping``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from fastapi import APIRouter, Query
from sqlalchemy import func
from sqlmodel import Session, col, select

from api.deps import NotifyChangeDep, SessionDep, SettingsDep
from api.openai_errors import OpenAIRoute
from api.openai_mapping import (
    CHECKPOINT_PREFIX,
    EVENT_PREFIX,
    FILE_PREFIX,
    JOB_PREFIX,
    estimated_finish,
    fine_tuning_job,
    job_checkpoint,
    job_config_fields,
    job_event,
    parse_object_id,
)
from api.openai_schemas import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)
from mftd import registry
from mftd.errors import InvalidValueError, NotFoundError
from mftd.jobconfig import JobConfig
from mftd.status import JobStatus
from mftd.tables import Checkpoint, Event, Job, Metric, Model
from mftd.timeutil import utcnow

router = APIRouter(prefix="/fine_tuning/jobs", tags=["openai"], route_class=OpenAIRoute)

PACE_WINDOW_STEPS = 20
AfterQuery = Query(None, description="An id from the previous page: list what comes after it.")


def _job_public(session: Session, job: Job) -> FineTuningJob:
    model = session.get(Model, job.model_id)
    status = JobStatus(job.status)
    trained_tokens = finish = None
    if status.is_final:
        trained_tokens = session.exec(
            select(func.sum(Metric.tokens)).where(Metric.job_id == job.id, Metric.split == "train")
        ).one()
    elif status == JobStatus.RUNNING:
        recent = session.exec(
            select(Metric)
            .where(Metric.job_id == job.id, Metric.split == "train")
            .order_by(col(Metric.id).desc())
            .limit(PACE_WINDOW_STEPS)
        ).all()
        finish = estimated_finish(job, sorted(recent, key=lambda metric: metric.id), utcnow())
    return fine_tuning_job(job, model, trained_tokens, finish)


def _get_job(session: Session, job_id: str) -> Job:
    return registry.get_job(session, parse_object_id(job_id, JOB_PREFIX, "fine-tuning job"))


@router.post("", response_model=FineTuningJob)
def create_fine_tuning_job(
    session: SessionDep, settings: SettingsDep, notify_change: NotifyChangeDep, job_in: FineTuningJobCreate
) -> FineTuningJob:
    """Queue a supervised fine-tuning job of a registered model on an uploaded file."""
    try:
        dataset_id = registry.get_dataset(session, parse_object_id(job_in.training_file, FILE_PREFIX, "file")).id
    except NotFoundError as error:
        raise InvalidValueError(
            "training_file", f"training file {job_in.training_file!r} does not exist; upload it first with POST /v1/files (purpose fine-tune)."
        ) from error
    fields, priority = job_config_fields(job_in)
    job = registry.create_job(
        session,
        settings,
        model=job_in.model,
        dataset=dataset_id,
        config=JobConfig.model_validate(fields),
        name=job_in.suffix,
        priority=priority,
    )
    notify_change()
    return _job_public(session, job)


@router.get("", response_model=FineTuningJobList)
def list_fine_tuning_jobs(
    session: SessionDep, after: Optional[str] = AfterQuery, limit: int = Query(20, ge=1, le=1000)
) -> FineTuningJobList:
    """Jobs, newest first."""
    query = select(Job)
    if after is not None:
        query = query.where(col(Job.id) < parse_object_id(after, JOB_PREFIX, "fine-tuning job"))
    jobs = list(session.exec(query.order_by(col(Job.id).desc()).limit(limit + 1)).all())
    return FineTuningJobList(data=[_job_public(session, job) for job in jobs[:limit]], has_more=len(jobs) > limit)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJob)
def retrieve_fine_tuning_job(session: SessionDep, fine_tuning_job_id: str) -> FineTuningJob:
    """One job."""
    return _job_public(session, _get_job(session, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
def cancel_fine_tuning_job(session: SessionDep, notify_change: NotifyChangeDep, fine_tuning_job_id: str) -> FineTuningJob:
    """Cancel a job; a running one stops at its next step (it stays running until then)."""
    job = registry.cancel_job(session, _get_job(session, fine_tuning_job_id).id)
    notify_change()
    return _job_public(session, job)


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
def pause_fine_tuning_job(session: SessionDep, notify_change: NotifyChangeDep, fine_tuning_job_id: str) -> FineTuningJob:
    """Pause a job; a running one writes a checkpoint first."""
    job = registry.pause_job(session, _get_job(session, fine_tuning_job_id).id)
    notify_change()
    return _job_public(session, job)


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
def resume_fine_tuning_job(session: SessionDep, notify_change: NotifyChangeDep, fine_tuning_job_id: str) -> FineTuningJob:
    """Put a paused job back in the queue."""
    job = registry.resume_job(session, _get_job(session, fine_tuning_job_id).id)
    notify_change()
    return _job_public(session, job)


def _event_data(event: Event) -> Any:
    if not event.data_json:
        return None
    try:
        return json.loads(event.data_json)
    except json.JSONDecodeError:
        return event.data_json


@router.get("/{fine_tuning_job_id}/events", response_model=FineTuningJobEventList)
def list_fine_tuning_events(
    session: SessionDep, fine_tuning_job_id: str, after: Optional[str] = AfterQuery, limit: int = Query(20, ge=1, le=1000)
) -> FineTuningJobEventList:
    """The job's events, newest first."""
    job = _get_job(session, fine_tuning_job_id)
    query = select(Event).where(Event.job_id == job.id)
    if after is not None:
        query = query.where(col(Event.id) < parse_object_id(after, EVENT_PREFIX, "event"))
    events = list(session.exec(query.order_by(col(Event.id).desc()).limit(limit + 1)).all())
    return FineTuningJobEventList(
        data=[job_event(event, _event_data(event)) for event in events[:limit]], has_more=len(events) > limit
    )


def _loss_at(session: Session, job_id: int, step: int, split: str) -> Optional[float]:
    return session.exec(
        select(Metric.loss).where(Metric.job_id == job_id, Metric.step == step, Metric.split == split).order_by(col(Metric.id).desc())
    ).first()


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=FineTuningJobCheckpointList)
def list_fine_tuning_checkpoints(
    session: SessionDep, fine_tuning_job_id: str, after: Optional[str] = AfterQuery, limit: int = Query(10, ge=1, le=1000)
) -> FineTuningJobCheckpointList:
    """The job's complete checkpoints, newest first, with the losses at their steps."""
    job = _get_job(session, fine_tuning_job_id)
    model = session.get(Model, job.model_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after is not None:
        query = query.where(col(Checkpoint.id) < parse_object_id(after, CHECKPOINT_PREFIX, "checkpoint"))
    checkpoints = list(session.exec(query.order_by(col(Checkpoint.id).desc()).limit(limit + 1)).all())
    data = [
        job_checkpoint(
            checkpoint, job, model, _loss_at(session, job.id, checkpoint.step, "train"), _loss_at(session, job.id, checkpoint.step, "eval")
        )
        for checkpoint in checkpoints[:limit]
    ]
    return FineTuningJobCheckpointList(
        data=data, has_more=len(checkpoints) > limit, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )
