"""Time-of-day windows such as ``23:00-07:00``: parsing and membership, midnight wrap included."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time

WINDOW_PATTERN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
ANY_TIME = ("", "any", "always")


@dataclass(frozen=True)
class HourWindow:
    """From ``start`` (included) to ``end`` (excluded); past midnight when ``end <= start`` (equal: all day)."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        moment = moment.replace(second=0, microsecond=0) if moment.second or moment.microsecond else moment
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{'24:00' if self.end == time(0) and self.start == time(0) else format(self.end, '%H:%M')}"


def parse_hours(text: str) -> tuple[HourWindow, ...]:
    """``"23:00-07:00"`` or several, comma-separated; ``""``/``"any"`` is no restriction (an empty tuple).

    Raises:
        ValueError: a window is not ``HH:MM-HH:MM`` with valid times (``24:00`` may end one).
    """
    if text.strip().lower() in ANY_TIME:
        return ()
    windows = []
    for part in text.split(","):
        match = WINDOW_PATTERN.match(part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a window like 23:00-07:00")
        start_hour, start_minute, end_hour, end_minute = (int(group) for group in match.groups())
        windows.append(HourWindow(_time(start_hour, start_minute, part), _time(end_hour, end_minute, part)))
    return tuple(windows)


def is_within(windows: tuple[HourWindow, ...], moment: time) -> bool:
    return not windows or any(window.contains(moment) for window in windows)


def _time(hour: int, minute: int, part: str) -> time:
    if hour == 24 and minute == 0:
        return time(0)
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise ValueError(f"{part.strip()!r} has a time that does not exist")
    return time(hour, minute)
