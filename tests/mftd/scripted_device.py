"""The one thing the daemon tests mock: the sensors, scripted as a sensors file would hold them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Optional

from mftd.device import DeviceMonitor
from mftd.sensors import ScriptedSource, SensorReader
from mftd.settings import Settings

PHONE_ON_CHARGER = {"charging": True, "battery_percent": 80, "battery_temp_c": 30.0, "free_storage_mb": 10_000}


class ScriptedSensors:
    """Readings a test changes between ticks: ``sensors.values.update(charging=False, battery_percent=10)``."""

    def __init__(self, **values: Any):
        self.values: dict[str, Any] = {**PHONE_ON_CHARGER, **values}
        self.reads = 0

    def _get(self) -> dict[str, Any]:
        self.reads += 1
        return self.values

    def reader(self) -> SensorReader:
        return SensorReader([ScriptedSource(self._get, name="scripted")])


def scripted_monitor(settings: Settings, sensors: ScriptedSensors, to_local: Optional[Callable[[datetime], datetime]] = None) -> DeviceMonitor:
    """A monitor over ``sensors``; local time is UTC unless ``to_local`` says otherwise."""
    return DeviceMonitor(settings, sensors.reader(), to_local=to_local or (lambda moment: moment))
