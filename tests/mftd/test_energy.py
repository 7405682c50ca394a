"""Energy accounting: the integration rule, and the tick integrating a running (fake) worker's power."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mftd.daemon import Daemon
from mftd.energy import EnergySample, energy_between, mwh_per_1k_tokens
from mftd.supervisor import Supervisor
from mftd.timeutil import utcnow
from tests.mftd.conftest import fake_worker_command, get_job, wait_until_ready
from tests.mftd.scripted_device import ScriptedSensors, scripted_monitor

T0 = datetime(2026, 6, 1, 12, 0)


def sample(seconds: float, power: float | None = 2.0, charging: bool | None = False, percent: float | None = 50, tokens: int = 0):
    return EnergySample(T0 + timedelta(seconds=seconds), power, charging, percent, tokens)


def test_trapezoid_on_battery():
    delta = energy_between(sample(0, power=2.0, tokens=0), sample(36, power=4.0, percent=49, tokens=900))
    assert delta.energy_mwh == pytest.approx(3.0 * 36 / 3.6)  # 3 W for 36 s = 30 mWh
    assert delta.energy_seconds == 36 and delta.energy_tokens == 900 and delta.battery_percent_used == 1
    assert mwh_per_1k_tokens(delta.energy_mwh, delta.energy_tokens) == pytest.approx(30 / 0.9)


def test_no_energy_while_charging_or_without_power_but_the_battery_still_counts():
    assert energy_between(sample(0, charging=True), sample(10, charging=True)).energy_mwh == 0
    no_power = energy_between(sample(0, power=None), sample(10, power=None, percent=48))
    assert no_power.energy_mwh == 0 and no_power.battery_percent_used == 2


def test_a_long_gap_is_not_integrated():
    assert energy_between(sample(0), sample(600)).is_empty


def test_the_tick_integrates_power_while_the_job_runs(engine, settings, fake_jobs_root, make_job):
    sensors = ScriptedSensors(charging=False, battery_percent=90, battery_current_ma=-500, battery_voltage_v=4.0)
    supervisor = Supervisor(engine, settings, command_factory=fake_worker_command(fake_jobs_root))
    daemon = Daemon(settings, engine, supervisor=supervisor, monitor=scripted_monitor(settings, sensors))
    try:
        job_id = make_job(name="sleep")
        start = utcnow()
        daemon.tick(now=start)
        wait_until_ready(settings, job_id)
        daemon.tick(now=start + timedelta(seconds=1))
        sensors.values.update(battery_percent=89)
        daemon.tick(now=start + timedelta(seconds=37))
        job = get_job(engine, job_id)
        assert job.energy_mwh == pytest.approx(2.0 * 36 / 3.6)  # 0.5 A x 4 V for 36 s
        assert job.energy_seconds == pytest.approx(36)
        assert job.battery_percent_used == 1
    finally:
        daemon.shutdown()
