"""In-loop throttling: pause between optimizer steps as the daemon's ``jobs/<id>/throttle.json`` says.

The daemon owns the sensors and writes the duty cycle (``mftd.throttle``); the worker only reads
the file, between steps, when it changed. A pause never touches the model, the optimizer or any
RNG, so a throttled run ends with the same weights, bit for bit, as a full-speed one. (The thread
count is left alone on purpose: another count can change the order of float sums.)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

from mftd.throttle import FULL_SPEED, Throttle, read_throttle

logger = logging.getLogger(__name__)

PAUSE_SLICE_SECONDS = 0.1


class ThrottleFile:
    """Reads the throttle file when its modification time changes, and pauses after steps.

    Args:
        path: ``jobs/<id>/throttle.json``.
        sleep: waits (tests pass a recorder).
    """

    def __init__(self, path: Path, sleep: Callable[[float], None] = time.sleep):
        self.path = path
        self.sleep = sleep
        self.throttle: Throttle = FULL_SPEED
        self._seen_mtime: Optional[int] = None

    def current(self) -> Throttle:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._seen_mtime:
            self._seen_mtime = mtime
            previous, self.throttle = self.throttle, (read_throttle(self.path) if mtime is not None else None) or FULL_SPEED
            if self.throttle != previous:
                logger.info("throttle: %s", self.throttle.reason or "full speed")
        return self.throttle

    def pause_after_step(self, step_seconds: float, is_stop_requested: Callable[[], bool]) -> float:
        """Pause as long as the duty cycle asks, in short slices so that a stop request ends it at once; returns the seconds paused."""
        remaining = self.current().pause_after(step_seconds)
        paused = 0.0
        while remaining > 0 and not is_stop_requested():
            chunk = min(PAUSE_SLICE_SECONDS, remaining)
            self.sleep(chunk)
            paused += chunk
            remaining -= chunk
        return paused
