"""Start-up recovery of jobs left running by a daemon that is gone."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from mftd.db import new_session
from mftd.recovery import ORPHANED_REASON, is_worker_process, recover_orphaned_jobs
from mftd.status import JobStatus
from tests.mftd.conftest import get_job, run_fake_module, wait_until_ready


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_running_job_whose_worker_is_gone_becomes_interrupted(engine, settings, make_job):
    orphan = make_job(status=JobStatus.RUNNING, worker_pid=dead_pid(), step=12, interruptions=2)
    untouched = make_job(status=JobStatus.QUEUED)
    with new_session(engine) as session:
        assert recover_orphaned_jobs(session, settings) == [orphan]
    job = get_job(engine, orphan)
    assert job.status == JobStatus.INTERRUPTED
    assert job.status_reason == ORPHANED_REASON
    assert (job.worker_pid, job.heartbeat_at, job.not_before) == (None, None, None)
    assert job.interruptions == 2, "a daemon restart does not count against the job's retry budget"
    assert get_job(engine, untouched).status == JobStatus.QUEUED


def test_a_running_job_without_a_pid_becomes_interrupted(engine, settings, make_job):
    job_id = make_job(status=JobStatus.RUNNING)
    with new_session(engine) as session:
        assert recover_orphaned_jobs(session, settings) == [job_id]
    assert get_job(engine, job_id).status == JobStatus.INTERRUPTED


@pytest.mark.parametrize(
    "stop_request, expected", [("pause", JobStatus.PAUSED), ("cancel", JobStatus.CANCELLED), ("device", JobStatus.INTERRUPTED)]
)
def test_a_pending_user_request_is_honoured(engine, settings, make_job, stop_request, expected):
    job_id = make_job(status=JobStatus.RUNNING, worker_pid=dead_pid(), stop_request=stop_request)
    with new_session(engine) as session:
        recover_orphaned_jobs(session, settings)
    assert get_job(engine, job_id).status == expected


def test_a_live_worker_is_stopped_before_its_job_is_settled(engine, settings, make_job, fake_jobs_root):
    job_id = make_job(status=JobStatus.RUNNING)
    worker = run_fake_module(fake_jobs_root, "jobs.worker", str(job_id), "--data-dir", str(settings.data_dir), "--mode", "sleep")
    try:
        wait_until_ready(settings, job_id)
        with new_session(engine) as session:
            job = get_job(engine, job_id)
            job.worker_pid = worker.pid
            session.add(job)
            session.commit()
        assert is_worker_process(worker.pid, job_id)
        assert not is_worker_process(worker.pid, job_id + 1)

        with new_session(engine) as session:
            assert recover_orphaned_jobs(session, settings) == [job_id]
        assert not psutil.pid_exists(worker.pid) or worker.poll() is not None
        assert (settings.job_dir(job_id) / "stopped").exists(), "the worker got SIGTERM and stopped cleanly"
        job = get_job(engine, job_id)
        assert job.status == JobStatus.INTERRUPTED and job.interruptions == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_worker_ignoring_sigterm_is_killed_after_the_grace(engine, settings, make_job, fake_jobs_root):
    settings = settings.model_copy(update={"stop_grace_seconds": 0.3})
    job_id = make_job(status=JobStatus.RUNNING)
    worker = run_fake_module(
        fake_jobs_root, "jobs.worker", str(job_id), "--data-dir", str(settings.data_dir), "--mode", "ignore-term"
    )
    try:
        wait_until_ready(settings, job_id)
        with new_session(engine) as session:
            job = get_job(engine, job_id)
            job.worker_pid = worker.pid
            session.add(job)
            session.commit()
            recover_orphaned_jobs(session, settings)
        assert worker.poll() is not None, "the worker was killed"
        assert not (settings.job_dir(job_id) / "stopped").exists()
        assert get_job(engine, job_id).status == JobStatus.INTERRUPTED
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_reused_pid_is_left_alone(engine, settings, make_job):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        job_id = make_job(status=JobStatus.RUNNING, worker_pid=stranger.pid)
        with new_session(engine) as session:
            assert recover_orphaned_jobs(session, settings) == [job_id]
        assert psutil.pid_exists(stranger.pid) and stranger.poll() is None
        assert get_job(engine, job_id).status == JobStatus.INTERRUPTED
    finally:
        stranger.kill()
        stranger.wait()


def test_the_worker_check_can_be_injected(engine, settings, make_job):
    seen = []
    pid = dead_pid()
    job_id = make_job(status=JobStatus.RUNNING, worker_pid=pid)
    with new_session(engine) as session:
        recover_orphaned_jobs(session, settings, is_worker_alive=lambda pid, job: seen.append((pid, job)) or False)
    assert seen == [(pid, job_id)]
