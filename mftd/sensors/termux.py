"""Termux:API's ``termux-battery-status``: Android's own battery readings, for Termux on a phone.

It prints JSON such as ``{"present": true, "percentage": 60, "plugged": "UNPLUGGED",
"status": "DISCHARGING", "temperature": 30.1, "current": -383800, "voltage": 3868, ...}``:
``temperature`` in °C, ``voltage`` in mV (Android's EXTRA_VOLTAGE), ``current`` in µA
(BatteryManager.BATTERY_PROPERTY_CURRENT_NOW; positive while charging). A few devices report the
current in mA; a magnitude under 10,000 is taken as mA.

The command asks the Termux:API app over a broadcast, which takes a fraction of a second and hangs
when the app is missing, so answers are reused for ``min_interval_seconds`` and a timeout backs off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any, Callable, Optional

from mftd.sensors.base import Reading, available, unavailable

COMMAND = "termux-battery-status"
SOURCE = "termux-api"
NAMES = (
    "battery_present",
    "charging",
    "battery_percent",
    "battery_status",
    "battery_temp_c",
    "battery_current_ma",
    "battery_voltage_v",
)
# |current| below this is in mA, not µA (no phone draws under 10 mA while awake).
MILLIAMPERE_THRESHOLD = 10_000


class TermuxBatterySource:
    """Runs ``termux-battery-status`` (where it exists) and turns its JSON into readings.

    Args:
        command: the command's name or path.
        timeout_seconds: how long one call may take.
        min_interval_seconds: reuse an answer this long.
        retry_after_seconds: after a failure, do not call again for this long.
        clock: monotonic seconds (tests pass their own).
    """

    name = SOURCE
    names = NAMES

    def __init__(
        self,
        command: str = COMMAND,
        timeout_seconds: float = 5.0,
        min_interval_seconds: float = 5.0,
        retry_after_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.command = command
        self.timeout_seconds = timeout_seconds
        self.min_interval_seconds = min_interval_seconds
        self.retry_after_seconds = retry_after_seconds
        self.clock = clock
        self._cached: Optional[list[Reading]] = None
        self._cached_until = float("-inf")

    def read(self) -> list[Reading]:
        now = self.clock()
        if self._cached is not None and now < self._cached_until:
            return self._cached
        path = shutil.which(self.command)
        if path is None:
            readings = _all_unavailable(f"{self.command} not found (on Termux: pkg install termux-api, plus the Termux:API app)")
            self._remember(readings, now, self.retry_after_seconds)
            return readings
        payload, problem = self._run(path)
        if problem is not None:
            readings = _all_unavailable(problem)
            self._remember(readings, now, self.retry_after_seconds)
            return readings
        readings = parse_battery_status(payload)
        self._remember(readings, now, self.min_interval_seconds)
        return readings

    def _remember(self, readings: list[Reading], now: float, seconds: float) -> None:
        self._cached = readings
        self._cached_until = now + seconds

    def _run(self, path: str) -> tuple[Any, Optional[str]]:
        try:
            result = subprocess.run(
                [path], capture_output=True, text=True, timeout=self.timeout_seconds, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return None, f"{self.command} did not answer within {self.timeout_seconds:g} s (is the Termux:API app installed?)"
        except OSError as error:
            return None, f"cannot run {self.command}: {error.strerror or error}"
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip().splitlines()
            return None, f"{self.command} exited with {result.returncode}" + (f": {said[-1][:200]}" if said else "")
        try:
            payload = json.loads(result.stdout)
        except ValueError:
            return None, f"{self.command} printed something that is not JSON: {result.stdout.strip()[:120]!r}"
        if not isinstance(payload, dict):
            return None, f"{self.command} printed {type(payload).__name__}, expected a JSON object"
        if "error" in payload and "percentage" not in payload:
            return None, f"{self.command} answered with an error: {str(payload['error'])[:200]}"
        return payload, None


def parse_battery_status(payload: dict[str, Any]) -> list[Reading]:
    """Readings from ``termux-battery-status``'s JSON; a missing or odd field makes that reading unavailable."""
    readings: list[Reading] = []

    def number(key: str) -> Optional[float]:
        value = payload.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    present = payload.get("present")
    if isinstance(present, bool):
        readings.append(available("battery_present", present, SOURCE))
    else:
        readings.append(unavailable("battery_present", SOURCE, "no 'present' field"))

    plugged = str(payload.get("plugged") or "").upper()
    status = str(payload.get("status") or "").upper()
    if plugged and plugged != "UNKNOWN":
        readings.append(available("charging", plugged != "UNPLUGGED", SOURCE))
    elif status in ("CHARGING", "FULL"):
        readings.append(available("charging", True, SOURCE))
    else:
        readings.append(unavailable("charging", SOURCE, f"plugged is {payload.get('plugged')!r}"))

    percentage = number("percentage")
    readings.append(
        available("battery_percent", percentage, SOURCE)
        if percentage is not None
        else unavailable("battery_percent", SOURCE, "no 'percentage' field")
    )
    readings.append(
        available("battery_status", status.lower().replace("_", " "), SOURCE)
        if status
        else unavailable("battery_status", SOURCE, "no 'status' field")
    )
    temperature = number("temperature")
    readings.append(
        available("battery_temp_c", round(temperature, 1), SOURCE)
        if temperature is not None
        else unavailable("battery_temp_c", SOURCE, "no 'temperature' field")
    )
    current = number("current")
    if current is None:
        readings.append(unavailable("battery_current_ma", SOURCE, "no 'current' field (older Termux:API)"))
    else:
        milliamperes = current if abs(current) < MILLIAMPERE_THRESHOLD else current / 1000
        readings.append(available("battery_current_ma", round(milliamperes, 1), SOURCE))
    voltage = number("voltage")
    if voltage is None or voltage <= 0:
        readings.append(unavailable("battery_voltage_v", SOURCE, "no 'voltage' field"))
    else:
        readings.append(available("battery_voltage_v", round(voltage / 1000 if voltage > 100 else voltage, 3), SOURCE))
    return readings


def _all_unavailable(reason: str) -> list[Reading]:
    return [unavailable(name, SOURCE, reason) for name in NAMES]
