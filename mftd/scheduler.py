"""The scheduler's decision: given the jobs, the device and the running worker, what to do now.

``decide`` is a pure function (no database, no clock, no processes): the daemon's tick takes a
snapshot, calls it, and applies the returned actions through the supervisor. Device policy
(constraints, hysteresis) lives in ``mftd.policy``; ``DeviceState.verdict_for`` carries each
job's verdict here, and this module only reacts to it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Optional, Sequence, Union

from mftd.jobconfig import JobConstraints
from mftd.status import JobStatus

if TYPE_CHECKING:
    from mftd.device import DeviceState
    from mftd.settings import Settings
    from mftd.tables import Job

DEVICE_STOP_REQUEST = "device"


@dataclass(frozen=True)
class JobView:
    """What the scheduler needs to know about one job, frozen at the start of a tick."""

    id: int
    status: JobStatus
    priority: int
    created_at: datetime
    stop_request: Optional[str] = None
    not_before: Optional[datetime] = None
    interruptions: int = 0
    heartbeat_at: Optional[datetime] = None
    status_reason: Optional[str] = None
    constraints: Optional[JobConstraints] = None
    tokens_seen: int = 0

    @classmethod
    def of(cls, job: "Job") -> "JobView":
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            priority=job.priority,
            created_at=job.created_at,
            stop_request=job.stop_request,
            not_before=job.not_before,
            interruptions=job.interruptions,
            heartbeat_at=job.heartbeat_at,
            status_reason=job.status_reason,
            constraints=_constraints_of(job.config_json),
            tokens_seen=job.tokens_seen or 0,
        )


def _constraints_of(config_json: str) -> Optional[JobConstraints]:
    """The job's own constraints; None (the daemon's defaults) if the config cannot be read."""
    try:
        return JobConstraints.model_validate(json.loads(config_json).get("constraints") or {})
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class RunningView:
    """The worker process the supervisor owns right now."""

    job_id: int
    started_at: datetime
    stop_sent_at: Optional[datetime] = None


@dataclass(frozen=True)
class Limits:
    """The time and retry limits ``decide`` enforces."""

    heartbeat_timeout_seconds: float = 180.0
    stop_grace_seconds: float = 120.0
    max_interruptions: int = 5

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Limits":
        return cls(
            heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
            stop_grace_seconds=settings.stop_grace_seconds,
            max_interruptions=settings.max_interruptions,
        )


@dataclass(frozen=True)
class StartJob:
    job_id: int


@dataclass(frozen=True)
class StopJob:
    """Ask the worker to checkpoint and exit. ``request`` is written to ``job.stop_request`` if none is set yet."""

    job_id: int
    reason: str
    request: Optional[str] = None


@dataclass(frozen=True)
class KillJob:
    job_id: int
    reason: str


@dataclass(frozen=True)
class FailJob:
    job_id: int
    reason: str


Action = Union[StartJob, StopJob, KillJob, FailJob]


def decide(
    jobs: Sequence[JobView],
    device: "DeviceState",
    now: datetime,
    running: Optional[RunningView],
    limits: Limits = Limits(),
) -> list[Action]:
    """What to do at ``now``.

    Args:
        jobs: the jobs that are not final.
        device: the current device state; a job whose verdict disallows training does not start, or is stopped.
        now: naive UTC.
        running: the supervisor's worker, or None when it has none.
        limits: heartbeat timeout, stop grace and retry budget.

    Returns:
        The actions, in the order they should be applied.
    """
    by_id = {job.id: job for job in jobs}
    actions: list[Action] = []

    if running is not None:
        job = by_id.get(running.job_id)
        if job is None or job.status != JobStatus.RUNNING:
            actions.append(KillJob(running.job_id, "the job is no longer running in the database"))
        else:
            actions.extend(_watch_running(job, running, device, now, limits))

    # A job marked running that the supervisor does not own (e.g. a worker left over from another
    # daemon) keeps the slot until its heartbeat goes stale.
    for job in jobs:
        if job.status == JobStatus.RUNNING and (running is None or job.id != running.job_id):
            silence = _seconds_since(job.heartbeat_at, now)
            if silence is None or silence > limits.heartbeat_timeout_seconds:
                actions.append(KillJob(job.id, _silence_text(silence, limits)))

    failing = {job.id for job in jobs if _is_out_of_retries(job, limits)}
    for job_id in sorted(failing):
        actions.append(FailJob(job_id, _out_of_retries_text(by_id[job_id], limits)))

    slot_taken = running is not None or any(job.status == JobStatus.RUNNING for job in jobs)
    if not slot_taken:
        candidates = [
            job
            for job in jobs
            if job.status.is_resumable
            and job.id not in failing
            and (job.not_before is None or job.not_before <= now)
            and device.verdict_for(job.id).allowed
        ]
        if candidates:
            best = min(candidates, key=lambda job: (-job.priority, job.created_at, job.id))
            actions.append(StartJob(best.id))
    return actions


def _watch_running(
    job: JobView, running: RunningView, device: "DeviceState", now: datetime, limits: Limits
) -> list[Action]:
    if running.stop_sent_at is not None:
        waited = (now - running.stop_sent_at).total_seconds()
        if waited > limits.stop_grace_seconds:
            return [KillJob(job.id, f"the worker did not stop within {limits.stop_grace_seconds:g} s of being asked to")]
        return []
    silence = _seconds_since(job.heartbeat_at or running.started_at, now)
    if silence is not None and silence > limits.heartbeat_timeout_seconds:
        return [KillJob(job.id, _silence_text(silence, limits))]
    if job.stop_request:
        return [StopJob(job.id, _stop_request_text(job.stop_request))]
    verdict = device.verdict_for(job.id)
    if not verdict.allowed:
        reasons = "; ".join(verdict.reasons) or "the device cannot train right now"
        return [StopJob(job.id, reasons, request=DEVICE_STOP_REQUEST)]
    return []


def _is_out_of_retries(job: JobView, limits: Limits) -> bool:
    return job.status == JobStatus.INTERRUPTED and job.interruptions > limits.max_interruptions


def _seconds_since(moment: Optional[datetime], now: datetime) -> Optional[float]:
    return None if moment is None else (now - moment).total_seconds()


def _silence_text(silence: Optional[float], limits: Limits) -> str:
    if silence is None:
        return "the job is marked running but has no worker and no heartbeat"
    return f"no heartbeat from the worker for {silence:.0f} s (limit {limits.heartbeat_timeout_seconds:g} s)"


def _stop_request_text(request: str) -> str:
    return {"pause": "paused by the user", "cancel": "cancelled by the user"}.get(request, f"stop requested ({request})")


def _out_of_retries_text(job: JobView, limits: Limits) -> str:
    last = _without_retry_note(job.status_reason or "")
    last_text = f" The last time: {last}." if last else ""
    return (
        f"the worker was interrupted {job.interruptions} times in a row without making progress "
        f"(limit {limits.max_interruptions}).{last_text} Its log is jobs/{job.id}/worker.log. "
        "If Android killed it (the phantom process killer of Android 12+ kills background processes of apps): "
        "run `adb shell device_config put activity_manager max_phantom_processes 2147483647` once "
        "(Android 14+: Developer options > Disable child process restrictions), and turn off battery optimisation for Termux. "
        "If it ran out of memory: try a smaller max_seq_len or batch_size, gradient_checkpointing=true, or method=lora. "
        "Then submit the job again (or raise MFTD_MAX_INTERRUPTIONS)."
    )


def _without_retry_note(reason: str) -> str:
    """'killed by SIGKILL (interruption 3; retrying after ...)' -> 'killed by SIGKILL'."""
    return re.sub(r"\s*\(interruption \d+; retrying after [^)]*\)\s*$", "", reason).rstrip(". ")


def backoff_delay(interruptions: int, base_seconds: float = 2.0, cap_seconds: float = 300.0) -> timedelta:
    """How long to wait before restarting after the ``interruptions``-th interruption in a row."""
    if interruptions <= 0:
        return timedelta(0)
    return timedelta(seconds=min(cap_seconds, base_seconds * 2 ** (interruptions - 1)))
