"""The worker's side of the soft thermal limit: read the daemon's throttle file, pause between steps, stop at once."""

from __future__ import annotations

import os

import pytest

from jobs.throttle import ThrottleFile
from mftd.throttle import Throttle, write_throttle


def test_no_file_is_full_speed(tmp_path):
    slept = []
    assert ThrottleFile(tmp_path / "throttle.json", sleep=slept.append).pause_after_step(2.0, lambda: False) == 0
    assert slept == []


def test_the_pause_fills_the_duty_cycle_and_follows_the_file(tmp_path):
    path = tmp_path / "throttle.json"
    slept = []
    throttle = ThrottleFile(path, sleep=slept.append)
    write_throttle(path, Throttle(0.5, "warm"))
    assert throttle.pause_after_step(1.0, lambda: False) == pytest.approx(1.0)
    write_throttle(path, Throttle(1.0))
    os.utime(path, ns=(1, 1))  # a new mtime even on coarse clocks
    assert throttle.pause_after_step(1.0, lambda: False) == 0


def test_a_stop_request_ends_the_pause(tmp_path):
    path = tmp_path / "throttle.json"
    write_throttle(path, Throttle(0.1, "hot"))
    slept = []
    paused = ThrottleFile(path, sleep=slept.append).pause_after_step(10.0, lambda: len(slept) >= 3)
    assert paused == pytest.approx(0.3)
