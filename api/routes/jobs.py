"""Jobs: create, list, read, delete, and pause / resume / cancel."""

from typing import Optional

from fastapi import APIRouter, status

from api.deps import LimitQuery, NotifyChangeDep, SessionDep, SettingsDep, SkipQuery
from api.schemas import JobCreate, JobPublic, JobsPublic, Message
from mftd import registry
from mftd.status import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED)
def create_job(session: SessionDep, settings: SettingsDep, notify_change: NotifyChangeDep, job_in: JobCreate) -> JobPublic:
    """Queue a fine-tuning job; every JobConfig field may be given at the top level."""
    job = registry.create_job(
        session,
        settings,
        model=job_in.model,
        dataset=job_in.dataset,
        config=job_in.to_config(),
        name=job_in.name,
        priority=job_in.priority,
    )
    notify_change()
    return JobPublic.from_row(job)


@router.get("", response_model=JobsPublic)
def read_jobs(
    session: SessionDep,
    status: Optional[JobStatus] = None,
    skip: SkipQuery = 0,
    limit: LimitQuery = 100,
) -> JobsPublic:
    """Jobs, newest first, optionally only those with one status."""
    jobs, count = registry.list_jobs(session, status, skip, limit)
    return JobsPublic(data=[JobPublic.from_row(job) for job in jobs], count=count)


@router.get("/{job_id}", response_model=JobPublic)
def read_job(session: SessionDep, job_id: int) -> JobPublic:
    """One job with its status, progress and config."""
    return JobPublic.from_row(registry.get_job(session, job_id))


@router.delete("/{job_id}", response_model=Message)
def delete_job(session: SessionDep, settings: SettingsDep, job_id: int) -> Message:
    """Delete a finished job with its records and files."""
    registry.delete_job(session, settings, job_id)
    return Message(message=f"job {job_id} deleted")


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(session: SessionDep, notify_change: NotifyChangeDep, job_id: int) -> JobPublic:
    """Pause a job; a running one checkpoints first (its stop_request shows pause until then)."""
    job = registry.pause_job(session, job_id)
    notify_change()
    return JobPublic.from_row(job)


@router.post("/{job_id}/resume", response_model=JobPublic)
def resume_job(session: SessionDep, notify_change: NotifyChangeDep, job_id: int) -> JobPublic:
    """Put a paused job back in the queue."""
    job = registry.resume_job(session, job_id)
    notify_change()
    return JobPublic.from_row(job)


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(session: SessionDep, notify_change: NotifyChangeDep, job_id: int) -> JobPublic:
    """Cancel a job; a running one stops first (its stop_request shows cancel until then)."""
    job = registry.cancel_job(session, job_id)
    notify_change()
    return JobPublic.from_row(job)
