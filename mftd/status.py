"""The job state machine: the statuses, the allowed moves, and the one function that changes a job's status."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from mftd.errors import InvalidTransitionError, StatusChangedError
from mftd.timeutil import utcnow

if TYPE_CHECKING:
    from sqlmodel import Session

    from mftd.tables import Job


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"          # device conditions stopped it; resumes by itself
    PAUSED = "paused"            # the user paused it; resumes only on request
    INTERRUPTED = "interrupted"  # the worker died without a clean stop; resumes from the last checkpoint
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def is_resumable(self) -> bool:
        """Statuses the scheduler may start a worker from."""
        return self in (JobStatus.QUEUED, JobStatus.WAITING, JobStatus.INTERRUPTED)


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

ALLOWED_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.WAITING,
            JobStatus.PAUSED,
            JobStatus.INTERRUPTED,
        }
    ),
    JobStatus.WAITING: frozenset({JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.INTERRUPTED: frozenset({JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_move(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED_MOVES[current]


def set_status(session: "Session", job: "Job", new: JobStatus, reason: str = "") -> None:
    """Move ``job`` to ``new``, record it as an event, and commit.

    This is the only place a job's status is written.

    The write is a compare-and-set on the status the caller read, so two writers (the API
    pausing a job while the scheduler starts it) cannot both win: the loser gets the error.

    Raises:
        InvalidTransitionError: the move is not in ``ALLOWED_MOVES``, or the job's status
            changed in the database since ``job`` was read.
    """
    from sqlalchemy import update

    from mftd.tables import Event, Job

    current = JobStatus(job.status)
    if not can_move(current, new):
        raise _transition_error(job.id, current, new)
    result = session.execute(update(Job).where(Job.id == job.id, Job.status == current).values(status=new))
    if result.rowcount != 1:
        session.rollback()
        session.refresh(job)
        now_status = JobStatus(job.status)
        raise StatusChangedError(
            job.id, current.value, now_status.value, new.value, sorted(status.value for status in ALLOWED_MOVES[now_status])
        )
    now = utcnow()
    job.status = new
    job.status_reason = reason or None
    job.updated_at = now
    if new == JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if new.is_final:
        job.finished_at = now
    if new != JobStatus.RUNNING:
        job.worker_pid = None
        job.stop_request = None
    session.add(job)
    message = f"{current.value} -> {new.value}" + (f": {reason}" if reason else "")
    level = "error" if new == JobStatus.FAILED else ("warning" if new == JobStatus.INTERRUPTED else "info")
    session.add(Event(job_id=job.id, kind="status", level=level, message=message, created_at=now))
    session.commit()
    session.refresh(job)


def _transition_error(job_id: int, current: JobStatus, new: JobStatus) -> InvalidTransitionError:
    return InvalidTransitionError(job_id, current.value, new.value, sorted(status.value for status in ALLOWED_MOVES[current]))
