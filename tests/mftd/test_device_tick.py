"""The tick with scripted sensors: per-job constraints, waiting events, the throttle file, the wake lock, /v1/device."""

from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest
from sqlmodel import select

from api.routes.device import read_device
from mftd.daemon import Daemon
from mftd.db import new_session
from mftd.jobconfig import JobConfig, JobConstraints
from mftd.scheduler import StartJob
from mftd.status import JobStatus
from mftd.supervisor import Supervisor
from mftd.tables import Event, Job
from mftd.throttle import THROTTLE_FILENAME, read_throttle
from mftd.timeutil import utcnow
from tests.mftd.conftest import fake_worker_command, get_job, wait_until, wait_until_ready
from tests.mftd.scripted_device import ScriptedSensors, scripted_monitor


@pytest.fixture
def daemon(engine, settings, fake_jobs_root):
    sensors = ScriptedSensors()
    supervisor = Supervisor(engine, settings, command_factory=fake_worker_command(fake_jobs_root))
    daemon = Daemon(settings, engine, supervisor=supervisor, monitor=scripted_monitor(settings, sensors))
    daemon.sensors = sensors
    yield daemon
    daemon.shutdown()


def events(engine, job_id: int, kind: str) -> list[str]:
    with new_session(engine) as session:
        return [event.message for event in session.exec(select(Event).where(Event.job_id == job_id, Event.kind == kind).order_by(Event.id))]


def config_with(**constraints) -> str:
    return JobConfig(constraints=JobConstraints(**constraints)).model_dump_json()


def test_each_job_has_its_own_constraints_and_a_waiting_event_once(daemon, make_job, engine):
    daemon.sensors.values.update(charging=False, battery_percent=60)
    picky = make_job(name="sleep", priority=5)
    with new_session(engine) as session:
        job = session.get(Job, picky)
        job.config_json = config_with(require_charging=True)
        session.add(job)
        session.commit()
    easy = make_job(name="sleep")
    assert daemon.tick() == [StartJob(easy)]
    daemon.tick()
    assert events(engine, picky, "device") == ["waiting for the device: not charging"]
    state = read_device(daemon.settings)
    verdicts = {job.job_id: job for job in state.jobs}
    assert verdicts[picky].allowed is False and verdicts[picky].reasons == ["not charging"]
    assert verdicts[easy].allowed is True and verdicts[easy].status == "running"
    assert state.can_train is True
    assert {check.constraint for check in state.constraints} >= {"min_battery_percent", "max_battery_temp_c"}
    assert all(check.if_unavailable for check in state.constraints)


def test_the_soft_limit_throttles_the_running_worker_and_lets_go_when_cool(daemon, make_job, engine, settings):
    job_id = make_job(name="sleep")
    daemon.tick()
    wait_until_ready(settings, job_id)
    throttle_path = settings.job_dir(job_id) / THROTTLE_FILENAME
    daemon.sensors.values.update(battery_temp_c=40.0)  # between the soft 38 and the hard 42 °C
    daemon.tick()
    assert read_throttle(throttle_path).duty_cycle == 0.625
    assert get_job(engine, job_id).status == JobStatus.RUNNING
    daemon.sensors.values.update(battery_temp_c=41.0)
    daemon.tick()
    assert read_throttle(throttle_path).duty_cycle == pytest.approx(0.438)
    daemon.sensors.values.update(battery_temp_c=35.0)
    daemon.tick()
    assert read_throttle(throttle_path).duty_cycle == 1.0
    messages = events(engine, job_id, "throttle")
    assert messages[0].startswith("slowing down: battery 40 °C is above the soft limit 38 °C")
    assert messages[1] == "back to full speed: the battery cooled below the soft limit"
    assert len(messages) == 2


def _fake_command(folder, name, log):
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {name} >> {log}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_wake_lock_is_held_while_the_worker_runs(daemon, make_job, engine, settings, tmp_path, monkeypatch):
    bin_dir = tmp_path / "termux-bin"
    bin_dir.mkdir()
    log = tmp_path / "wake.log"
    _fake_command(bin_dir, "termux-wake-lock", log)
    _fake_command(bin_dir, "termux-wake-unlock", log)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    job_id = make_job(name="train:3")
    daemon.tick()
    assert log.read_text().split() == ["termux-wake-lock"]
    wait_until(lambda: (daemon.tick(), get_job(engine, job_id).status == JobStatus.SUCCEEDED)[1], what="success")
    assert log.read_text().split() == ["termux-wake-lock", "termux-wake-unlock"]


def test_without_the_commands_there_is_no_wake_lock(daemon, make_job, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no termux-wake-lock anywhere
    make_job(name="train:1")
    daemon.tick()
    assert daemon.supervisor.wake_lock.is_held is False


def test_out_of_retries_says_what_happened_and_what_to_try(daemon, make_job, engine, settings):
    job_id = make_job(name="kill-self")
    moment = utcnow()
    for attempt in range(settings.max_interruptions + 1):
        moment += timedelta(minutes=10)
        daemon.tick(now=moment)
        wait_until(daemon.supervisor.poll, what=f"death {attempt}")
    daemon.tick(now=moment + timedelta(minutes=10))
    job = get_job(engine, job_id)
    assert job.status == JobStatus.FAILED
    assert "The last time: killed by SIGKILL — possibly the out-of-memory killer or Android's phantom process killer." in job.status_reason
    assert "max_phantom_processes" in job.status_reason and "gradient_checkpointing=true" in job.status_reason
    assert "retrying after" not in job.status_reason
