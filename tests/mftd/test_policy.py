"""The device policy as a pure function: constraints x readings x clock -> verdict, with hysteresis and throttle."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mftd.hours import parse_hours
from mftd.jobconfig import JobConstraints
from mftd.policy import Constraints, PolicyParams, evaluate, throttle_for, track_idle
from mftd.sensors import Readings
from mftd.sensors.base import available, unavailable
from mftd.settings import Settings

NOW = datetime(2026, 6, 1, 12, 0)
PARAMS = PolicyParams(idle_cpu_percent=20, idle_minutes=5, settle_seconds=300, resume_margin_temp_c=3, resume_margin_battery_percent=5, min_duty_cycle=0.25)


def readings(**values) -> Readings:
    merged = {}
    for name, value in values.items():
        merged[name] = unavailable(name, "test", value[1]) if isinstance(value, tuple) else available(name, value, "test")
    return Readings(merged)


def judge(constraints: Constraints, reading: Readings, **kwargs):
    return evaluate(constraints, reading, kwargs.pop("now", NOW), kwargs.pop("local_now", NOW), PARAMS, **kwargs)


def test_job_constraints_fall_back_to_the_settings():
    settings = Settings(min_battery_percent=40, allowed_hours="23:00-07:00")
    resolved = Constraints.resolve(JobConstraints(require_charging=True, allowed_hours=""), settings)
    assert resolved.require_charging is True
    assert resolved.min_battery_percent == 40
    assert resolved.allowed_hours == ()


@pytest.mark.parametrize(
    "values, allowed, reason",
    [
        ({"charging": False, "battery_percent": 10}, False, "battery 10% is below 30% and not charging"),
        ({"charging": True, "battery_percent": 10}, True, None),
        ({"charging": ("x", "cannot read"), "battery_percent": 50}, True, None),
        ({"charging": ("x", "denied"), "battery_percent": ("x", "denied")}, False, "battery level unknown (denied) and the charging state is unknown"),
    ],
)
def test_battery_not_low_passes_while_charging(values, allowed, reason):
    verdict = judge(Constraints(min_battery_percent=30), readings(**values))
    assert verdict.allowed is allowed
    if reason:
        assert verdict.reasons == (reason,)


def test_require_charging_fails_on_an_unknown_state():
    verdict = judge(Constraints(require_charging=True), readings(charging=("x", "permission denied")))
    assert verdict.reasons == ("cannot tell whether the device is charging (permission denied)",)


def test_an_unknown_temperature_is_not_enforced_and_says_so():
    verdict = judge(Constraints(max_battery_temp_c=42), readings(battery_temp_c=("x", "no sensor")))
    assert verdict.allowed
    assert verdict.checks[0].detail == "battery temperature unknown, limit not enforced (no sensor)"


def test_free_storage_unknown_fails():
    verdict = judge(Constraints(min_free_storage_mb=500), readings(free_storage_mb=("x", "statvfs failed")))
    assert not verdict.allowed


@pytest.mark.parametrize("clock, inside", [("23:30", True), ("03:00", True), ("06:59", True), ("07:00", False), ("12:00", False)])
def test_allowed_hours_wrap_past_midnight(clock, inside):
    hour, minute = map(int, clock.split(":"))
    local = NOW.replace(hour=hour, minute=minute)
    verdict = judge(Constraints(allowed_hours=parse_hours("23:00-07:00"), allowed_hours_text="23:00-07:00"), readings(), local_now=local)
    assert verdict.allowed is inside


def test_idle_needs_low_load_for_the_idle_minutes_and_the_screen_off():
    constraints = Constraints(require_idle=True)
    quiet = readings(others_cpu_percent=5.0)
    since = track_idle(None, quiet, NOW, PARAMS)
    assert since == NOW
    assert not judge(constraints, quiet, idle_since=since).allowed
    later = NOW + timedelta(minutes=5)
    assert judge(constraints, quiet, now=later, idle_since=track_idle(since, quiet, later, PARAMS)).allowed
    busy = readings(others_cpu_percent=60.0)
    assert track_idle(since, busy, later, PARAMS) is None
    screen = readings(others_cpu_percent=5.0, screen_on=True)
    assert judge(constraints, screen, now=later, idle_since=since).reasons == ("the screen is on",)
    unknown = readings(others_cpu_percent=("x", "cannot read /proc/stat: permission denied"))
    assert "cannot tell whether the device is idle" in judge(constraints, unknown, idle_since=since).reasons[0]


def test_resuming_needs_the_margins_and_the_settle_period():
    constraints = Constraints(min_battery_percent=30, max_battery_temp_c=42)
    warm = readings(charging=False, battery_percent=80, battery_temp_c=40.5)
    assert judge(constraints, warm).allowed  # a running job keeps running at 40.5 °C
    resuming = judge(constraints, warm, resuming=True)
    assert not resuming.allowed and resuming.held_since is None
    assert resuming.reasons == ("battery 40.5 °C must cool to 39 °C (3 °C under the 42 °C limit) to resume",)
    low = judge(constraints, readings(charging=False, battery_percent=33, battery_temp_c=30), resuming=True)
    assert low.reasons == ("battery 33% is below 35% (30% plus a 5% margin to resume) and not charging",)

    cool = readings(charging=False, battery_percent=80, battery_temp_c=38.5)
    first = judge(constraints, cool, resuming=True)
    assert not first.allowed and first.held_since == NOW
    assert "resumes once they have held for 300 s" in first.reasons[0]
    almost = judge(constraints, cool, now=NOW + timedelta(seconds=299), resuming=True, held_since=first.held_since)
    assert not almost.allowed
    settled = judge(constraints, cool, now=NOW + timedelta(seconds=300), resuming=True, held_since=first.held_since)
    assert settled.allowed
    # a blip resets the settle period
    blip = judge(constraints, warm, now=NOW + timedelta(seconds=200), resuming=True, held_since=first.held_since)
    assert blip.held_since is None


@pytest.mark.parametrize("temperature, duty", [(None, 1.0), (37.0, 1.0), (38.0, 1.0), (40.0, 0.625), (42.0, 0.25), (44.0, 0.25)])
def test_throttle_grows_between_the_soft_and_the_hard_limit(temperature, duty):
    values = {"battery_temp_c": temperature} if temperature is not None else {}
    throttle = throttle_for(Constraints(max_battery_temp_c=42, throttle_battery_temp_c=38), readings(**values), 0.25)
    assert throttle.duty_cycle == duty
    assert throttle.is_throttled is (duty < 1)


def test_throttle_pause_fills_the_duty_cycle():
    from mftd.throttle import Throttle

    assert Throttle(0.5).pause_after(2.0) == pytest.approx(2.0)
    assert Throttle(0.25).pause_after(1.0) == pytest.approx(3.0)
    assert Throttle(1.0).pause_after(5.0) == 0.0


def test_allowed_hours_are_in_the_configured_time_zone():
    from mftd.device import local_clock

    assert local_clock("Asia/Tokyo")(datetime(2026, 6, 1, 15, 0)) == datetime(2026, 6, 2, 0, 0)
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        Settings(time_zone="Mars/Base")
