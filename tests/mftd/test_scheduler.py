"""decide(): the scheduler's pure decision, table-driven."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mftd.device import DeviceState
from mftd.scheduler import (
    FailJob,
    JobView,
    KillJob,
    Limits,
    RunningView,
    StartJob,
    StopJob,
    backoff_delay,
    decide,
)
from mftd.status import JobStatus

NOW = datetime(2026, 1, 1, 12, 0, 0)
LIMITS = Limits(heartbeat_timeout_seconds=180, stop_grace_seconds=120, max_interruptions=3)
CAN_TRAIN = DeviceState(can_train=True)
CANNOT_TRAIN = DeviceState(can_train=False, reasons=("battery 12% is below 20%", "battery 44 °C is above 40 °C"))


def job(job_id: int, status: JobStatus = JobStatus.QUEUED, *, age_minutes: float = 10, **fields) -> JobView:
    fields.setdefault("heartbeat_at", NOW if status == JobStatus.RUNNING else None)
    return JobView(id=job_id, status=status, priority=fields.pop("priority", 0), created_at=NOW - timedelta(minutes=age_minutes), **fields)


def running(job_id: int, **fields) -> RunningView:
    fields.setdefault("started_at", NOW - timedelta(minutes=1))
    return RunningView(job_id=job_id, **fields)


CASES = [
    pytest.param([], CAN_TRAIN, None, [], id="nothing to do"),
    pytest.param([job(1)], CAN_TRAIN, None, [StartJob(1)], id="starts a queued job"),
    pytest.param(
        [job(1, age_minutes=5), job(2, age_minutes=50), job(3, age_minutes=30)],
        CAN_TRAIN, None, [StartJob(2)], id="oldest first at equal priority",
    ),
    pytest.param(
        [job(1, age_minutes=50), job(2, priority=5, age_minutes=1), job(3, priority=5, age_minutes=2)],
        CAN_TRAIN, None, [StartJob(3)], id="priority first, then age",
    ),
    pytest.param(
        [job(1, JobStatus.WAITING, age_minutes=3), job(2, JobStatus.INTERRUPTED, age_minutes=2), job(3, JobStatus.PAUSED, age_minutes=90)],
        CAN_TRAIN, None, [StartJob(1)], id="waiting and interrupted are resumable, paused is not",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING), job(2, priority=100)],
        CAN_TRAIN, running(1), [], id="one job at a time",
    ),
    pytest.param(
        [job(1, JobStatus.INTERRUPTED, priority=9, not_before=NOW + timedelta(seconds=4)), job(2)],
        CAN_TRAIN, None, [StartJob(2)], id="not_before in the future is skipped",
    ),
    pytest.param(
        [job(1, JobStatus.INTERRUPTED, not_before=NOW - timedelta(seconds=1))],
        CAN_TRAIN, None, [StartJob(1)], id="not_before in the past is due",
    ),
    pytest.param(
        [job(1, JobStatus.INTERRUPTED, not_before=NOW + timedelta(seconds=4))],
        CAN_TRAIN, None, [], id="only a backed-off job: wait",
    ),
    pytest.param([job(1)], CANNOT_TRAIN, None, [], id="device cannot train: nothing starts"),
    pytest.param(
        [job(1, JobStatus.RUNNING, stop_request="pause")],
        CAN_TRAIN, running(1), [StopJob(1, "paused by the user")], id="pause request stops the worker",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING, stop_request="cancel")],
        CAN_TRAIN, running(1), [StopJob(1, "cancelled by the user")], id="cancel request stops the worker",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING, stop_request="pause")],
        CAN_TRAIN, running(1, stop_sent_at=NOW - timedelta(seconds=5)), [], id="stop is sent once",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING, stop_request="pause")],
        CAN_TRAIN, running(1, stop_sent_at=NOW - timedelta(seconds=121)),
        [KillJob(1, "the worker did not stop within 120 s of being asked to")], id="stop grace exceeded: kill",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING, heartbeat_at=NOW - timedelta(seconds=181))],
        CAN_TRAIN, running(1),
        [KillJob(1, "no heartbeat from the worker for 181 s (limit 180 s)")], id="stale heartbeat: kill",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING, heartbeat_at=NOW - timedelta(seconds=179))],
        CAN_TRAIN, running(1), [], id="fresh enough heartbeat",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING)],
        CANNOT_TRAIN, running(1),
        [StopJob(1, "battery 12% is below 20%; battery 44 °C is above 40 °C", request="device")],
        id="device cannot train: the running worker is stopped with the reasons",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING, stop_request="cancel")],
        CANNOT_TRAIN, running(1), [StopJob(1, "cancelled by the user")], id="a user's request wins over the device",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING, heartbeat_at=NOW - timedelta(seconds=200))],
        CAN_TRAIN, None,
        [KillJob(1, "no heartbeat from the worker for 200 s (limit 180 s)")],
        id="a running job without our worker is released once its heartbeat is stale",
    ),
    pytest.param(
        [job(1, JobStatus.RUNNING), job(2)],
        CAN_TRAIN, None, [], id="a running job without our worker still holds the slot while it beats",
    ),
    pytest.param(
        [job(1, JobStatus.PAUSED)],
        CAN_TRAIN, running(1), [KillJob(1, "the job is no longer running in the database")],
        id="our worker for a job that is not running is killed",
    ),
]


@pytest.mark.parametrize("jobs, device, running_view, expected", CASES)
def test_decide(jobs, device, running_view, expected):
    assert decide(jobs, device, NOW, running_view, LIMITS) == expected


def test_retry_budget_exhausted_fails_the_job_and_starts_the_next():
    jobs = [
        job(1, JobStatus.INTERRUPTED, priority=9, interruptions=4, status_reason="killed by SIGKILL"),
        job(2, JobStatus.INTERRUPTED, interruptions=3),
    ]
    actions = decide(jobs, CAN_TRAIN, NOW, None, LIMITS)
    assert [type(action) for action in actions] == [FailJob, StartJob]
    fail, start = actions
    assert fail.job_id == 1 and start.job_id == 2
    assert "interrupted 4 times in a row without making progress (limit 3)" in fail.reason
    assert "killed by SIGKILL" in fail.reason
    assert "worker.log" in fail.reason and "gradient_checkpointing" in fail.reason


def test_retry_budget_is_checked_even_while_another_job_runs():
    jobs = [job(1, JobStatus.RUNNING), job(2, JobStatus.INTERRUPTED, interruptions=4)]
    actions = decide(jobs, CAN_TRAIN, NOW, running(1), LIMITS)
    assert [type(action) for action in actions] == [FailJob]


def test_a_job_without_a_heartbeat_uses_the_worker_start_time():
    jobs = [job(1, JobStatus.RUNNING, heartbeat_at=None)]
    assert decide(jobs, CAN_TRAIN, NOW, running(1, started_at=NOW - timedelta(seconds=10)), LIMITS) == []
    [kill] = decide(jobs, CAN_TRAIN, NOW, running(1, started_at=NOW - timedelta(seconds=500)), LIMITS)
    assert isinstance(kill, KillJob)


@pytest.mark.parametrize(
    "interruptions, seconds", [(0, 0), (1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (40, 300)]
)
def test_backoff_doubles_and_is_capped(interruptions, seconds):
    assert backoff_delay(interruptions) == timedelta(seconds=seconds)
