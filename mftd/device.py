"""What the device can spare right now: sensor readings, each with its source or why it is unavailable.

This module reads psutil (battery, CPU load, free storage). Later sources (Termux:API, sysfs,
a scripted file for tests) plug in as more ``Reading`` producers; the scheduler only sees
``DeviceState``.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import psutil


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


@dataclass(frozen=True)
class DeviceState:
    """The readings at one moment, and whether training may run (with the reasons if not)."""

    readings: dict[str, Reading] = field(default_factory=dict)
    can_train: bool = True
    reasons: tuple[str, ...] = ()

    def value(self, name: str) -> Any:
        reading = self.readings.get(name)
        return reading.value if reading is not None and reading.is_available else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "can_train": self.can_train,
            "reasons": list(self.reasons),
            "readings": [asdict(reading) for reading in self.readings.values()],
        }


def _psutil_readings(data_dir: Path) -> list[Reading]:
    readings: list[Reading] = []
    try:
        battery = psutil.sensors_battery()
    except (PermissionError, OSError, AttributeError) as error:
        battery = None
        battery_error: Optional[str] = f"psutil could not read the battery: {error}"
    else:
        battery_error = None if battery is not None else "no battery found (counted as mains power)"
    if battery is not None:
        readings.append(Reading("battery_percent", round(battery.percent, 1), "%", "psutil"))
        readings.append(Reading("charging", bool(battery.power_plugged), "bool", "psutil"))
    else:
        readings.append(Reading("battery_percent", None, "%", "psutil", battery_error))
        readings.append(Reading("charging", True, "bool", "psutil (no battery: mains power)"))
    try:
        readings.append(Reading("cpu_percent", psutil.cpu_percent(interval=None), "%", "psutil"))
    except (PermissionError, OSError) as error:
        readings.append(Reading("cpu_percent", None, "%", "psutil", str(error)))
    try:
        free_mb = shutil.disk_usage(data_dir if data_dir.exists() else Path.home()).free / 2**20
        readings.append(Reading("free_storage_mb", round(free_mb), "MB", "statvfs"))
    except OSError as error:
        readings.append(Reading("free_storage_mb", None, "MB", "statvfs", str(error)))
    try:
        memory = psutil.virtual_memory()
        readings.append(Reading("available_memory_mb", round(memory.available / 2**20), "MB", "psutil"))
        readings.append(Reading("total_memory_mb", round(memory.total / 2**20), "MB", "psutil"))
    except (PermissionError, OSError) as error:
        readings.append(Reading("available_memory_mb", None, "MB", "psutil", str(error)))
    return readings


def read_device_state(data_dir: Path) -> DeviceState:
    """Read every sensor now. Never raises: a failing sensor becomes an unavailable reading."""
    readings = {reading.name: reading for reading in _psutil_readings(data_dir)}
    return DeviceState(readings=readings, can_train=True, reasons=())
