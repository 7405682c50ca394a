"""Scripted readings: a JSON file named by ``MFTD_SENSORS_FILE``, or values a program hands over.

Tests and demos play the phone with it. The file holds one JSON object whose keys are reading
names (``mftd.sensors.base.READING_NAMES``), e.g. ``{"charging": false, "battery_percent": 10,
"battery_temp_c": 31.5}``. A key it leaves out falls through to the real sources; ``null``, or
``{"unavailable": "why"}``, makes that reading unavailable. The file is read on every tick, so
writing it (atomically: write aside, then rename) changes what the daemon sees within a tick. A
file that cannot be read or parsed keeps the values it last held.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from mftd.sensors.base import READING_NAMES, Reading, available, unavailable

log = logging.getLogger(__name__)

FILE_SOURCE = "sensors file"


class ScriptedSource:
    """Readings from a mapping that ``get_values`` returns on every read.

    Args:
        get_values: returns ``{reading name: value}``; see the module docstring for the forms.
        name: the source's name as people see it.
    """

    names = tuple(READING_NAMES)

    def __init__(self, get_values: Callable[[], Mapping[str, Any]], name: str = "scripted"):
        self.get_values = get_values
        self.name = name

    def read(self) -> list[Reading]:
        return readings_from_values(self.get_values(), self.name)


class SensorsFileSource(ScriptedSource):
    """The file named by ``MFTD_SENSORS_FILE``."""

    def __init__(self, path: Path):
        self.path = path
        self._values: Mapping[str, Any] = {}
        self._problem: str | None = None
        super().__init__(self._load, f"{FILE_SOURCE} {path}")

    def _load(self) -> Mapping[str, Any]:
        try:
            values = json.loads(self.path.read_text())
            if not isinstance(values, dict):
                raise ValueError(f"it holds a JSON {type(values).__name__}, expected an object")
        except (OSError, ValueError) as error:
            problem = f"cannot use the sensors file {self.path}: {error}; keeping its last values"
            if problem != self._problem:
                log.warning("%s", problem)
                self._problem = problem
            return self._values
        self._problem = None
        unknown = sorted(set(values) - set(READING_NAMES))
        if unknown:
            log.debug("the sensors file names readings mftd does not know: %s", ", ".join(unknown))
        self._values = values
        return values


def readings_from_values(values: Mapping[str, Any], source: str) -> list[Reading]:
    readings = []
    for name, value in values.items():
        if name not in READING_NAMES:
            continue
        if value is None:
            readings.append(unavailable(name, source, f"the {source} says null"))
        elif isinstance(value, dict):
            readings.append(unavailable(name, source, str(value.get("unavailable") or f"the {source} says unavailable")))
        else:
            readings.append(available(name, value, source))
    return readings
