"""A day-long phone trace through the real tick (injected clock, the trace as the only sensor, a fast stand-in worker)."""

from __future__ import annotations

import pytest

from mftd.hours import is_within, parse_hours
from tests.mftd.phone_trace import POLICIES, phone_day, replay, violations

pytestmark = pytest.mark.slow


def test_the_trace_is_deterministic_and_has_its_day():
    day = phone_day()
    assert day == phone_day()
    assert len(day) == 24 * 60
    plugged = {minute.at.strftime("%H:%M") for minute in day if minute.plugged}
    assert {"07:00", "13:30", "17:45", "23:30", "03:00"} <= plugged
    assert max(minute.ambient_c for minute in day) > 31  # the hot afternoon


@pytest.mark.parametrize("name", ["defaults: charging or >=30%, <=42 C", "charging + 23:00-07:00", "charging only"])
def test_no_training_while_a_constraint_is_broken_and_the_job_finishes_in_its_windows(name, tmp_path):
    constraints, overrides = POLICIES[name]
    outcome = replay(name, constraints, overrides, workdir=tmp_path)
    assert violations(outcome) == []
    assert outcome.finished_at is not None, f"{name} did not finish within the day"
    assert outcome.preemptions <= 2, f"{name} flapped: {outcome.preemptions} preemptions"
    if constraints.allowed_hours:
        windows = parse_hours(constraints.allowed_hours)
        assert all(is_within(windows, record.at.time()) for record in outcome.records if record.training)


def test_without_hysteresis_and_throttle_the_job_flaps_on_a_hot_afternoon(tmp_path):
    with_hysteresis = replay("defaults", *POLICIES["defaults: charging or >=30%, <=42 C"], workdir=tmp_path)
    without = replay("none", *POLICIES["defaults, no hysteresis/throttle"], workdir=tmp_path)
    assert violations(without) == []
    assert without.preemptions >= with_hysteresis.preemptions + 3
    assert with_hysteresis.throttled_minutes > 0  # the soft limit slowed it down instead
