"""The supervisor after a worker was killed for memory: real fake-worker processes killed by a real SIGKILL, scripted OOM kill counters."""

from __future__ import annotations

import itertools
from typing import Optional

import pytest
from sqlmodel import select

from mftd.daemon import Daemon
from mftd.db import new_session
from mftd.oom_evidence import OomKillCount, WorkerMemory
from mftd.status import JobStatus
from mftd.supervisor import Supervisor
from mftd.tables import Event
from tests.mftd.conftest import fake_worker_command, get_job, plan_json, wait_until, wait_until_ready
from tests.mftd.scripted_device import ScriptedSensors, scripted_monitor


def growing_counter():
    """An OOM kill count that grows between every two readings: each worker that dies was OOM-killed."""
    counts = itertools.count()
    return lambda: OomKillCount("/proc/vmstat", next(counts))


def still_counter():
    return lambda: OomKillCount("/proc/vmstat", 5)


@pytest.fixture
def supervise(engine, settings, fake_jobs_root):
    """``supervise(mode, counter, sampler)`` -> a Supervisor with scripted memory sensors; all are shut down after."""
    made: list[Supervisor] = []

    def _supervise(mode: Optional[str] = None, counter=None, sampler=None) -> Supervisor:
        supervisor = Supervisor(
            engine, settings, command_factory=fake_worker_command(fake_jobs_root, mode), oom_kill_counter=counter, memory_sampler=sampler
        )
        made.append(supervisor)
        return supervisor

    yield _supervise
    for supervisor in made:
        supervisor.shutdown()


def memory_events(engine, job_id: int) -> list[Event]:
    with new_session(engine) as session:
        return list(session.exec(select(Event).where(Event.job_id == job_id, Event.kind == "memory").order_by(Event.id)).all())


def run_to_end(supervisor: Supervisor) -> JobStatus:
    return wait_until(supervisor.poll, what="the worker to exit")


def test_an_oom_kill_retries_at_once_with_half_the_micro_batch_without_using_the_retry_budget(supervise, make_job, engine):
    job_id = make_job(memory_plan_json=plan_json(8, 8))
    supervisor = supervise("kill-self", counter=growing_counter())
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.INTERRUPTED
    job = get_job(engine, job_id)
    assert job.micro_batch_cap == 4
    assert (job.interruptions, job.not_before) == (0, None)
    assert job.status_reason.startswith("the worker was killed for memory (the out-of-memory killer) at micro-batch 8 x 1;")
    [event] = memory_events(engine, job_id)
    assert event.level == "warning"
    assert event.message == (
        "the worker was killed for memory (the out-of-memory killer) at micro-batch 8 x 1 "
        "(estimate 1,234 MB, budget 9,642 MB); retrying with micro-batch 4 x 2, same effective batch 8"
    )


def test_an_oom_kill_at_micro_batch_1_fails_the_job_with_the_planner_numbers(supervise, make_job, engine):
    job_id = make_job(memory_plan_json=plan_json(1, 4), micro_batch_cap=1)
    supervisor = supervise("kill-self", counter=growing_counter())
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.FAILED
    job = get_job(engine, job_id)
    assert job.status_reason.startswith("the worker was killed for memory (the out-of-memory killer) at micro-batch 1 x 4, the smallest")
    assert "activations 770" in job.status_reason and "budget of 9,642 MB" in job.status_reason
    assert [event.level for event in memory_events(engine, job_id)] == ["error"]


def test_a_sigkill_without_an_oom_kill_stays_a_counted_interruption(supervise, make_job, engine):
    job_id = make_job(memory_plan_json=plan_json(8, 8))
    supervisor = supervise("kill-self", counter=still_counter())
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.INTERRUPTED
    job = get_job(engine, job_id)
    assert "possibly the out-of-memory killer or Android's phantom process killer" in job.status_reason
    assert (job.interruptions, job.micro_batch_cap, memory_events(engine, job_id)) == (1, None, [])


def test_a_sigkill_the_daemon_sent_is_never_a_memory_kill(supervise, make_job, engine, settings):
    job_id = make_job(memory_plan_json=plan_json(8, 8))
    supervisor = supervise("hang", counter=growing_counter())
    supervisor.start(job_id)
    wait_until_ready(settings, job_id)
    supervisor.kill(job_id, "no heartbeat from the worker for 200 s (limit 180 s)")
    job = get_job(engine, job_id)
    assert job.status_reason.startswith("no heartbeat from the worker for 200 s (limit 180 s); the worker was killed")
    assert (job.micro_batch_cap, memory_events(engine, job_id)) == (None, [])


def test_an_oom_kill_without_a_plan_is_a_counted_interruption_that_says_memory(supervise, make_job, engine):
    job_id = make_job()
    supervisor = supervise("kill-self", counter=growing_counter())
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.INTERRUPTED
    job = get_job(engine, job_id)
    assert job.status_reason.startswith("killed by SIGKILL for memory (the out-of-memory killer); the job has no memory plan to shrink")
    assert (job.interruptions, job.micro_batch_cap) == (1, None)


@pytest.mark.parametrize("rss_mb, available_mb, is_memory", [(3000.0, 500.0, True), (400.0, 20000.0, False)])
def test_without_a_counter_the_worker_share_of_memory_decides(supervise, make_job, engine, settings, rss_mb, available_mb, is_memory):
    job_id = make_job(memory_plan_json=plan_json(8, 8))
    supervisor = supervise("kill-self:0:1", counter=lambda: None, sampler=lambda pid: WorkerMemory(rss_mb, available_mb))
    supervisor.start(job_id)
    wait_until_ready(settings, job_id)
    assert supervisor.poll() is None  # the worker lives for a second: this poll samples its memory
    assert run_to_end(supervisor) == JobStatus.INTERRUPTED
    job = get_job(engine, job_id)
    if is_memory:
        assert job.micro_batch_cap == 4
        assert "probably the low-memory killer: it held 3,000 MB with 500 MB still available" in job.status_reason
    else:
        assert job.micro_batch_cap is None and job.interruptions == 1


def test_workers_run_with_malloc_settings_that_give_memory_back(supervise, make_job, settings, monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    job_id = make_job()
    supervisor = supervise("sleep")
    supervisor.start(job_id)
    pid = wait_until_ready(settings, job_id)
    assert "MALLOC_ARENA_MAX=8" in _environ(pid) and "MALLOC_MMAP_THRESHOLD_=1048576" in _environ(pid)
    assert "MFTD_MALLOC_DEFAULTS=MALLOC_ARENA_MAX,MALLOC_MMAP_THRESHOLD_" in _environ(pid)  # the worker may move the threshold


def test_malloc_settings_the_user_set_are_kept_and_not_marked_as_defaults(supervise, make_job, settings, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    job_id = make_job()
    supervisor = supervise("sleep")
    supervisor.start(job_id)
    pid = wait_until_ready(settings, job_id)
    assert "MALLOC_ARENA_MAX=4" in _environ(pid) and "MALLOC_MMAP_THRESHOLD_=65536" in _environ(pid)
    assert "MFTD_MALLOC_DEFAULTS=" in _environ(pid)  # none defaulted: the worker leaves the threshold alone


def _environ(pid: int) -> list[str]:
    with open(f"/proc/{pid}/environ", "rb") as file:
        return [entry.decode() for entry in file.read().split(b"\0")]


def test_the_tick_retries_a_memory_kill_at_once_down_to_micro_batch_1_then_fails(engine, settings, fake_jobs_root, make_job):
    """settings.max_interruptions is 3: four deaths that counted would fail the job as out of retries instead."""
    supervisor = Supervisor(engine, settings, command_factory=fake_worker_command(fake_jobs_root), oom_kill_counter=growing_counter())
    daemon = Daemon(settings, engine, supervisor=supervisor, monitor=scripted_monitor(settings, ScriptedSensors()))
    job_id = make_job(name="kill-self", memory_plan_json=plan_json(8, 8))
    try:
        wait_until(lambda: (daemon.tick(), get_job(engine, job_id).status == JobStatus.FAILED)[1], what="the job to fail")
    finally:
        daemon.shutdown()
    job = get_job(engine, job_id)
    assert job.micro_batch_cap == 1 and job.interruptions == 0
    assert [event.message.split(";")[-1].strip() for event in memory_events(engine, job_id)][:3] == [
        "retrying with micro-batch 4 x 2, same effective batch 8",
        "retrying with micro-batch 2 x 4, same effective batch 8",
        "retrying with micro-batch 1 x 8, same effective batch 8",
    ]
    assert job.status_reason.startswith("the worker was killed for memory (the out-of-memory killer) at micro-batch 1 x 8, the smallest")
