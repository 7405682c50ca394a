"""The soft thermal limit's message from the daemon to the training worker: a duty cycle, in ``jobs/<id>/throttle.json``.

The daemon writes it when the battery warms past the soft limit (and back to 1.0 when it cools);
the worker reads it between optimizer steps and pauses so that it trains ``duty_cycle`` of the
time. Only pauses, never fewer threads: a pause cannot change a single bit of the weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

THROTTLE_FILENAME = "throttle.json"
# A pause this long is the most one step waits, however slow the step was.
MAX_PAUSE_SECONDS = 120.0


@dataclass(frozen=True)
class Throttle:
    """Train ``duty_cycle`` of the time (1.0: full speed), and why."""

    duty_cycle: float = 1.0
    reason: str = ""

    @property
    def is_throttled(self) -> bool:
        return self.duty_cycle < 1.0

    def pause_after(self, step_seconds: float) -> float:
        """Seconds to pause after a step that took ``step_seconds``, so that training fills ``duty_cycle`` of the time."""
        if not self.is_throttled or step_seconds <= 0:
            return 0.0
        return min(MAX_PAUSE_SECONDS, step_seconds * (1 / max(self.duty_cycle, 0.01) - 1))


FULL_SPEED = Throttle()


def write_throttle(path: Path, throttle: Throttle) -> None:
    """Write aside, then rename, so the worker never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(asdict(throttle)) + "\n")
    os.replace(temporary, path)


def read_throttle(path: Path) -> Optional[Throttle]:
    """The throttle in ``path``; None when there is none or it cannot be read (then train at full speed)."""
    try:
        payload = json.loads(path.read_text())
        return Throttle(duty_cycle=min(1.0, max(0.01, float(payload["duty_cycle"]))), reason=str(payload.get("reason", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
