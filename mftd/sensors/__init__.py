"""Where the device readings come from: Termux:API, sysfs, psutil, and a scripted file, merged.

``SensorReader.read`` asks every source and keeps, for each reading, the first source's that is
available; when none is, the reading is unavailable with every source's reason. A machine with
no battery at all (a desktop, CI) counts as on mains power: ``charging`` is then true.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from mftd.sensors.base import READING_NAMES, Reading, Readings, SensorSource, available, unavailable
from mftd.sensors.psutil_source import PsutilSource
from mftd.sensors.scripted import ScriptedSource, SensorsFileSource
from mftd.sensors.sysfs import SysfsPowerSource, SysfsThermalSource
from mftd.sensors.termux import TermuxBatterySource

log = logging.getLogger(__name__)

__all__ = [
    "READING_NAMES",
    "Reading",
    "Readings",
    "ScriptedSource",
    "SensorReader",
    "SensorSource",
    "SensorsFileSource",
    "default_sources",
]


NO_SOURCE_REASONS = {
    "screen_on": "no source reads it (Android gives apps no screen state without root; a sensors file can set it)",
}


class SensorReader:
    """Reads every source and merges the readings (first available wins, in ``sources`` order)."""

    def __init__(self, sources: Sequence[SensorSource]):
        self.sources = list(sources)

    def read(self) -> Readings:
        """Never raises: a source that fails makes its readings unavailable with the error."""
        candidates: dict[str, list[Reading]] = {name: [] for name in READING_NAMES}
        for source in self.sources:
            try:
                readings = source.read()
            except Exception as error:  # a sensor bug must not stop the tick
                log.exception("sensor source %s failed", source.name)
                readings = [unavailable(name, source.name, f"the source failed: {error}") for name in source.names]
            for reading in readings:
                candidates.setdefault(reading.name, []).append(reading)
        merged = {name: _first_available(name, found) for name, found in candidates.items()}
        _count_no_battery_as_mains(merged)
        _compute_power(merged)
        return Readings(merged)


def default_sources(data_dir: Path, sensors_file: Optional[Path] = None) -> list[SensorSource]:
    """The sources in the order they are trusted: the scripted file, Termux:API, sysfs, psutil."""
    sources: list[SensorSource] = []
    if sensors_file is not None:
        sources.append(SensorsFileSource(sensors_file))
    sources += [TermuxBatterySource(), SysfsPowerSource(), SysfsThermalSource(), PsutilSource(data_dir)]
    return sources


def _first_available(name: str, found: list[Reading]) -> Reading:
    for reading in found:
        if reading.is_available:
            return reading
    if not found:
        return unavailable(name, "-", NO_SOURCE_REASONS.get(name, "no source reads it"))
    reasons = "; ".join(f"{reading.source}: {reading.unavailable_reason}" for reading in found)
    return unavailable(name, ", ".join(reading.source for reading in found), reasons)


def _count_no_battery_as_mains(merged: dict[str, Reading]) -> None:
    present = merged.get("battery_present")
    if present is not None and present.is_available and present.value is False and not merged["charging"].is_available:
        merged["charging"] = available("charging", True, f"no battery ({present.source}): mains power")


def _compute_power(merged: dict[str, Reading]) -> None:
    if merged["battery_power_w"].is_available:
        return
    current, voltage = merged["battery_current_ma"], merged["battery_voltage_v"]
    if current.is_available and voltage.is_available:
        watts = abs(float(current.value)) / 1000 * float(voltage.value)
        merged["battery_power_w"] = available("battery_power_w", round(watts, 3), "|current| x voltage")
