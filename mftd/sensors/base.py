"""Sensor readings: each one a value with its source, or unavailable with the reason.

A source (Termux:API, sysfs, psutil, a scripted file) turns what it can read into ``Reading``s;
``SensorReader`` merges the sources, first available reading wins. Nothing here raises for a
sensor that cannot be read: Android denies many of them to apps, and a tick must go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Protocol

# Every reading mftd knows, in the order people see them, with its unit and what it means.
READING_NAMES: dict[str, tuple[str, str]] = {
    "battery_present": ("bool", "whether the device has a battery (none: a desktop on mains power)"),
    "charging": ("bool", "on external power (plugged in), as JobScheduler's 'charging'"),
    "battery_percent": ("%", "battery level"),
    "battery_status": ("", "charging, discharging, full or not charging"),
    "battery_temp_c": ("°C", "battery temperature"),
    "battery_current_ma": ("mA", "battery current (the sign depends on the driver)"),
    "battery_voltage_v": ("V", "battery voltage"),
    "battery_power_w": ("W", "power through the battery, |current| x voltage"),
    "device_temp_c": ("°C", "the hottest thermal zone (SoC, skin, ...)"),
    "others_cpu_percent": ("%", "CPU used by processes other than mftd and its worker, of all cores"),
    "screen_on": ("bool", "whether the screen is on"),
    "free_storage_mb": ("MB", "free space where the data dir is"),
    "available_memory_mb": ("MB", "memory available to new processes"),
    "total_memory_mb": ("MB", "installed memory"),
}


@dataclass(frozen=True)
class Reading:
    """One sensor value, or ``None`` with the reason it could not be read."""

    name: str
    value: Any
    unit: str
    source: str
    unavailable_reason: Optional[str] = None

    @property
    def is_available(self) -> bool:
        return self.unavailable_reason is None


def available(name: str, value: Any, source: str) -> Reading:
    return Reading(name, value, unit_of(name), source)


def unavailable(name: str, source: str, reason: str) -> Reading:
    return Reading(name, None, unit_of(name), source, reason)


def unit_of(name: str) -> str:
    return READING_NAMES.get(name, ("", ""))[0]


class Readings(Mapping[str, Reading]):
    """The merged readings at one moment, by name."""

    def __init__(self, readings: Mapping[str, Reading] | None = None):
        self._readings = dict(readings or {})

    def __getitem__(self, name: str) -> Reading:
        return self._readings[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._readings)

    def __len__(self) -> int:
        return len(self._readings)

    def value(self, name: str) -> Any:
        """The value, or None when the reading is missing or unavailable."""
        reading = self._readings.get(name)
        return reading.value if reading is not None and reading.is_available else None

    def why_unavailable(self, name: str) -> str:
        reading = self._readings.get(name)
        if reading is None:
            return "no source reads it"
        return reading.unavailable_reason or ""


class SensorSource(Protocol):
    """Something that reads some of the ``READING_NAMES``."""

    name: str
    names: tuple[str, ...]  # what it can read; a crash makes these unavailable

    def read(self) -> list[Reading]: ...


def describe_os_error(error: OSError, path: object) -> str:
    """'cannot read PATH: permission denied' and the like, short enough for a table cell."""
    if isinstance(error, PermissionError):
        return f"cannot read {path}: permission denied (Android blocks it for apps without root)"
    if isinstance(error, FileNotFoundError):
        return f"{path} does not exist"
    return f"cannot read {path}: {error.strerror or error}"
