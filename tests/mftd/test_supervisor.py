"""The supervisor with real child processes (a fake worker script), and the daemon's tick driving it."""

from __future__ import annotations

import sys
from datetime import timedelta

import psutil
import pytest
from sqlmodel import select

from mftd.daemon import Daemon
from mftd.db import new_session
from mftd.scheduler import FailJob, KillJob, StartJob, StopJob
from mftd.status import JobStatus
from mftd.supervisor import Supervisor
from mftd.tables import Event
from mftd.timeutil import utcnow
from tests.mftd.conftest import fake_worker_command, get_job, wait_until, wait_until_ready
from tests.mftd.scripted_device import ScriptedSensors, scripted_monitor


@pytest.fixture
def supervise(engine, settings, fake_jobs_root):
    """``supervise(mode)`` -> a Supervisor whose workers run the fake worker in ``mode``; all are shut down after."""
    made: list[Supervisor] = []

    def _supervise(mode=None) -> Supervisor:
        supervisor = Supervisor(engine, settings, command_factory=fake_worker_command(fake_jobs_root, mode))
        made.append(supervisor)
        return supervisor

    yield _supervise
    for supervisor in made:
        supervisor.shutdown()


def run_to_end(supervisor: Supervisor) -> JobStatus:
    return wait_until(supervisor.poll, what="the worker to exit")


def test_start_marks_the_job_running_and_logs_the_worker(supervise, make_job, engine, settings):
    job_id = make_job()
    supervisor = supervise("sleep")
    supervisor.start(job_id)
    pid = wait_until_ready(settings, job_id)
    job = get_job(engine, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.worker_pid == pid
    assert job.heartbeat_at is not None and job.started_at is not None
    assert supervisor.running_view().job_id == job_id
    log = (settings.job_dir(job_id) / "worker.log").read_text()
    assert f"MFTD_DATA_DIR={settings.data_dir}" in log
    assert "worker started" in log


def test_exit_0_is_succeeded(supervise, make_job, engine):
    job_id = make_job()
    supervisor = supervise("train:3")
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.SUCCEEDED
    job = get_job(engine, job_id)
    assert (job.status, job.step, job.worker_pid, job.finished_at is not None) == (JobStatus.SUCCEEDED, 3, None, True)
    assert supervisor.running_view() is None


@pytest.mark.parametrize(
    "code, expected_reason",
    [
        (1, "fake failure with code 1"),
        (78, "the job cannot run as configured: fake failure with code 78"),
        (3, None),
    ],
)
def test_failures(supervise, make_job, engine, code, expected_reason):
    job_id = make_job()
    supervisor = supervise(f"exit:{code}")
    supervisor.start(job_id)
    status = run_to_end(supervisor)
    job = get_job(engine, job_id)
    if expected_reason is None:  # an unknown exit code is a worker death, not a verdict on the job
        assert status == JobStatus.INTERRUPTED
        assert job.status_reason.startswith("the worker exited with unexpected code 3")
        assert job.interruptions == 1
    else:
        assert status == JobStatus.FAILED
        assert job.status_reason == expected_reason


def test_exit_1_without_an_error_event_points_at_the_log(make_job, engine, settings):
    job_id = make_job()
    supervisor = Supervisor(
        engine, settings, command_factory=lambda job_id, data_dir: [sys.executable, "-c", "import torch_that_is_not_there"]
    )
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.FAILED
    assert get_job(engine, job_id).status_reason == (
        "the worker exited with code 1 without recording an error; its last words: "
        f"ModuleNotFoundError: No module named 'torch_that_is_not_there' (see jobs/{job_id}/worker.log)"
    )


def test_an_old_error_event_is_not_blamed_on_a_new_run(supervise, make_job, engine):
    job_id = make_job()
    with new_session(engine) as session:
        session.add(Event(job_id=job_id, kind="error", level="error", message="from an earlier run"))
        session.commit()
    supervisor = supervise("exit:1")
    supervisor.start(job_id)
    run_to_end(supervisor)
    assert get_job(engine, job_id).status_reason == "fake failure with code 1"


@pytest.mark.parametrize(
    "request_, expected, reason_part",
    [
        ("pause", JobStatus.PAUSED, "paused by the user"),
        ("cancel", JobStatus.CANCELLED, "cancelled by the user"),
        ("device", JobStatus.WAITING, "battery 12% is below 20%"),
        (None, JobStatus.INTERRUPTED, "stopped from outside"),
    ],
)
def test_a_requested_stop_ends_as_requested(supervise, make_job, engine, settings, request_, expected, reason_part):
    job_id = make_job()
    supervisor = supervise("sleep")
    supervisor.start(job_id)
    wait_until_ready(settings, job_id)
    if request_ in ("pause", "cancel"):  # what the API does
        with new_session(engine) as session:
            job = get_job(engine, job_id)
            job.stop_request = request_
            session.add(job)
            session.commit()
    supervisor.stop(job_id, "battery 12% is below 20%", request="device" if request_ == "device" else None)
    assert supervisor.running_view().stop_sent_at is not None
    assert run_to_end(supervisor) == expected
    job = get_job(engine, job_id)
    assert reason_part in job.status_reason
    assert job.interruptions == 0 and job.not_before is None, "a clean stop is not an interruption"
    assert job.stop_request is None


def test_a_device_stop_does_not_overwrite_a_user_request(supervise, make_job, engine, settings):
    job_id = make_job()
    supervisor = supervise("sleep")
    supervisor.start(job_id)
    wait_until_ready(settings, job_id)
    with new_session(engine) as session:
        job = get_job(engine, job_id)
        job.stop_request = "pause"
        session.add(job)
        session.commit()
    supervisor.stop(job_id, "too hot", request="device")
    assert run_to_end(supervisor) == JobStatus.PAUSED


def test_sigkill_is_an_interruption_with_backoff(supervise, make_job, engine):
    job_id = make_job()
    supervisor = supervise("kill-self")
    before = utcnow()
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.INTERRUPTED
    job = get_job(engine, job_id)
    assert "killed by SIGKILL — possibly the out-of-memory killer or Android's phantom process killer" in job.status_reason
    assert "interruption 1" in job.status_reason
    assert job.interruptions == 1 and job.interrupted_at_step == 0
    assert before + timedelta(seconds=2) <= job.not_before <= utcnow() + timedelta(seconds=2)


def test_deaths_without_progress_count_up_and_progress_resets_the_count(supervise, make_job, engine):
    job_id = make_job()
    supervisor = supervise("kill-self")
    counts, delays = [], []
    for _ in range(3):
        started = utcnow()
        supervisor.start(job_id)
        run_to_end(supervisor)
        job = get_job(engine, job_id)
        counts.append(job.interruptions)
        delays.append(round((job.not_before - started).total_seconds()))
    assert counts == [1, 2, 3]
    assert delays == [2, 4, 8]

    progressing = supervise("kill-self:5")
    progressing.start(job_id)
    run_to_end(progressing)
    job = get_job(engine, job_id)
    assert (job.step, job.interruptions, job.interrupted_at_step) == (5, 1, 5)


def test_kill_records_why(supervise, make_job, engine, settings):
    job_id = make_job()
    supervisor = supervise("hang")
    supervisor.start(job_id)
    wait_until_ready(settings, job_id)
    supervisor.kill(job_id, "no heartbeat from the worker for 200 s (limit 180 s)")
    assert supervisor.running_view() is None
    job = get_job(engine, job_id)
    assert job.status == JobStatus.INTERRUPTED
    assert job.status_reason.startswith("no heartbeat from the worker for 200 s (limit 180 s); the worker was killed")
    assert job.interruptions == 1


def test_shutdown_stops_the_worker_and_leaves_the_job_to_resume(supervise, make_job, engine, settings):
    job_id = make_job(step=7)
    supervisor = supervise("sleep")
    supervisor.start(job_id)
    wait_until_ready(settings, job_id)
    supervisor.shutdown()
    job = get_job(engine, job_id)
    assert job.status == JobStatus.INTERRUPTED
    assert job.status_reason == "the daemon stopped while this job was running; it resumes from its last checkpoint"
    assert job.interruptions == 0 and job.not_before is None


def test_shutdown_kills_a_worker_that_ignores_sigterm_without_counting_it(make_job, engine, settings, fake_jobs_root):
    settings = settings.model_copy(update={"stop_grace_seconds": 0.5})
    job_id = make_job()
    supervisor = Supervisor(engine, settings, command_factory=fake_worker_command(fake_jobs_root, "ignore-term"))
    supervisor.start(job_id)
    wait_until_ready(settings, job_id)
    supervisor.shutdown()
    job = get_job(engine, job_id)
    assert job.status == JobStatus.INTERRUPTED
    assert "the daemon stopped while this job was running" in job.status_reason
    assert "did not stop within 0.5 s" in job.status_reason
    assert job.interruptions == 0


def test_a_worker_that_cannot_start_fails_the_job(engine, settings, make_job):
    job_id = make_job()
    supervisor = Supervisor(engine, settings, command_factory=lambda job_id, data_dir: ["/nonexistent/python", "-m", "jobs.worker"])
    supervisor.start(job_id)
    job = get_job(engine, job_id)
    assert job.status == JobStatus.FAILED
    assert "could not start the training worker" in job.status_reason
    assert supervisor.running_view() is None


# ---- through the daemon's tick, with scripted device readings -------------------------------------------


@pytest.fixture
def daemon(engine, settings, fake_jobs_root):
    sensors = ScriptedSensors()
    supervisor = Supervisor(engine, settings, command_factory=fake_worker_command(fake_jobs_root))  # mode from job name
    daemon = Daemon(settings, engine, supervisor=supervisor, monitor=scripted_monitor(settings, sensors))
    daemon.sensors = sensors
    yield daemon
    daemon.shutdown()


def test_tick_runs_the_queue_one_job_at_a_time_by_priority(daemon, make_job, engine):
    low = make_job(name="train:2")
    high = make_job(name="train:2", priority=5)
    assert daemon.tick() == [StartJob(high)]
    assert daemon.tick() == []  # still running: nothing else starts
    wait_until(lambda: StartJob(low) in daemon.tick(), what="the second job to start")
    assert get_job(engine, high).status == JobStatus.SUCCEEDED
    wait_until(lambda: (daemon.tick(), get_job(engine, low).status == JobStatus.SUCCEEDED)[1], what="the second job to finish")


def test_tick_stops_for_the_device_and_resumes_when_it_allows(daemon, make_job, engine, settings):
    job_id = make_job(name="sleep")
    daemon.tick()
    wait_until_ready(settings, job_id)
    daemon.sensors.values.update(charging=False, battery_percent=10)
    assert daemon.tick() == [StopJob(job_id, "battery 10% is below 30% and not charging", request="device")]
    wait_until(lambda: (daemon.tick(), get_job(engine, job_id).status == JobStatus.WAITING)[1], what="waiting")
    assert get_job(engine, job_id).status_reason == "battery 10% is below 30% and not charging"
    assert daemon.tick() == []  # still cannot train
    daemon.sensors.values.update(charging=True)
    plugged_in = utcnow()
    assert daemon.tick(now=plugged_in) == []  # hysteresis: conditions must hold for the settle period first
    assert daemon.tick(now=plugged_in + timedelta(seconds=settings.settle_seconds - 1)) == []
    assert daemon.tick(now=plugged_in + timedelta(seconds=settings.settle_seconds)) == [StartJob(job_id)]
    assert get_job(engine, job_id).status == JobStatus.RUNNING


def test_tick_kills_a_silent_worker(daemon, make_job, engine, settings):
    job_id = make_job(name="hang")
    daemon.tick()
    wait_until_ready(settings, job_id)
    later = utcnow() + timedelta(seconds=settings.heartbeat_timeout_seconds + 1)
    [kill] = daemon.tick(now=later)
    assert isinstance(kill, KillJob) and kill.job_id == job_id
    job = get_job(engine, job_id)
    assert job.status == JobStatus.INTERRUPTED and job.interruptions == 1
    assert job.status_reason.startswith("no heartbeat from the worker for")


def test_tick_kills_a_worker_that_outstays_its_stop_grace(daemon, make_job, engine, settings):
    job_id = make_job(name="ignore-term")
    daemon.tick()
    wait_until_ready(settings, job_id)
    daemon.sensors.values.update(battery_temp_c=50)
    daemon.tick()
    assert daemon.tick(now=utcnow() + timedelta(seconds=1)) == []
    daemon.tick(now=utcnow() + timedelta(seconds=settings.stop_grace_seconds + 1))
    job = get_job(engine, job_id)
    assert job.status == JobStatus.INTERRUPTED
    assert job.status_reason.startswith(f"the worker did not stop within {settings.stop_grace_seconds:g} s")


def test_tick_fails_a_job_out_of_retries(daemon, make_job, engine, settings):
    job_id = make_job(name="kill-self")
    moment = utcnow()
    for attempt in range(1, settings.max_interruptions + 2):
        moment += timedelta(minutes=10)  # past any backoff
        assert daemon.tick(now=moment) == [StartJob(job_id)]
        wait_until(daemon.supervisor.poll, what=f"death {attempt}")
    assert get_job(engine, job_id).interruptions == settings.max_interruptions + 1
    actions = daemon.tick(now=moment + timedelta(minutes=10))
    assert [type(action) for action in actions] == [FailJob]
    job = get_job(engine, job_id)
    assert job.status == JobStatus.FAILED
    assert f"interrupted {settings.max_interruptions + 1} times in a row without making progress" in job.status_reason


def test_a_failing_tick_is_logged_not_raised(daemon, make_job, caplog):
    def broken_policy(jobs, now):
        raise RuntimeError("policy exploded")

    daemon.monitor.observe = broken_policy
    make_job()
    assert daemon.tick() == []
    assert "scheduler tick failed" in caplog.text


def test_events_record_the_story(daemon, make_job, engine, settings):
    job_id = make_job(name="sleep")
    daemon.tick()
    wait_until_ready(settings, job_id)
    daemon.sensors.values.update(battery_temp_c=45)
    daemon.tick()
    wait_until(lambda: (daemon.tick(), get_job(engine, job_id).status == JobStatus.WAITING)[1], what="waiting")
    daemon.tick()
    with new_session(engine) as session:
        messages = [event.message for event in session.exec(select(Event).where(Event.job_id == job_id).order_by(Event.id))]
    too_hot = "battery 45 °C is above 42 °C"
    assert messages == ["queued -> running", f"stopping the worker: {too_hot}", f"running -> waiting: {too_hot}"]


def test_poke_runs_a_tick_now_instead_of_at_the_next_interval(engine, settings, fake_jobs_root, make_job):
    settings = settings.model_copy(update={"tick_seconds": 3600})
    sensors = ScriptedSensors()
    supervisor = Supervisor(engine, settings, command_factory=fake_worker_command(fake_jobs_root))
    daemon = Daemon(settings, engine, supervisor=supervisor, monitor=scripted_monitor(settings, sensors))
    daemon.start_scheduler()
    try:
        wait_until(lambda: sensors.reads, what="the first tick")
        job_id = make_job(name="sleep")
        daemon.poke()
        wait_until(lambda: get_job(engine, job_id).status == JobStatus.RUNNING, timeout=5, what="the poked tick")
    finally:
        daemon.shutdown()
    job = get_job(engine, job_id)
    assert job.status == JobStatus.INTERRUPTED
    assert "the daemon stopped" in job.status_reason


def test_processes_the_worker_started_do_not_outlive_it(make_job, engine, settings, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); sys.exit(0)"
    )
    job_id = make_job()
    supervisor = Supervisor(engine, settings, command_factory=lambda job_id, data_dir: [sys.executable, "-c", script])
    supervisor.start(job_id)
    assert run_to_end(supervisor) == JobStatus.SUCCEEDED
    grandchild = int(pid_file.read_text())
    wait_until(lambda: not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE,
               timeout=5, what="the worker's own child to be killed")
