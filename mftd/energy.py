"""Energy accounting: integrate battery power while a job trains, and count the battery percentage it used.

Power is |current| x voltage from the sensors, integrated over each tick with the trapezoid rule,
and only while the device runs on its battery: while charging, the battery current is the
charger's surplus, not what training draws. Battery percentage points are counted whenever the
level drops while the job trains, so they are known wherever the level is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

# Longer gaps between two ticks (a phone asleep, a daemon stopped) are not integrated over.
MAX_GAP_SECONDS = 120.0


@dataclass(frozen=True)
class EnergySample:
    """What one tick saw of a training job and the battery."""

    at: datetime
    power_w: Optional[float]
    charging: Optional[bool]
    battery_percent: Optional[float]
    tokens_seen: int


@dataclass(frozen=True)
class EnergyDelta:
    """What to add to a job's energy columns for the time between two samples."""

    energy_mwh: float = 0.0
    energy_seconds: float = 0.0
    energy_tokens: int = 0
    battery_percent_used: float = 0.0

    @property
    def is_empty(self) -> bool:
        return not (self.energy_mwh or self.energy_seconds or self.energy_tokens or self.battery_percent_used)


def energy_between(previous: EnergySample, current: EnergySample, max_gap_seconds: float = MAX_GAP_SECONDS) -> EnergyDelta:
    """The energy and battery used between two samples of the same training run."""
    seconds = (current.at - previous.at).total_seconds()
    if seconds <= 0 or seconds > max_gap_seconds:
        return EnergyDelta()
    used = 0.0
    if previous.battery_percent is not None and current.battery_percent is not None:
        used = max(0.0, float(previous.battery_percent) - float(current.battery_percent))
    on_battery = previous.charging is False and current.charging is False
    if not on_battery or previous.power_w is None or current.power_w is None:
        return EnergyDelta(battery_percent_used=used)
    watts = (abs(previous.power_w) + abs(current.power_w)) / 2
    return EnergyDelta(
        energy_mwh=watts * seconds / 3.6,  # W·s -> mWh
        energy_seconds=seconds,
        energy_tokens=max(0, current.tokens_seen - previous.tokens_seen),
        battery_percent_used=used,
    )


def mwh_per_1k_tokens(energy_mwh: float, energy_tokens: int) -> Optional[float]:
    """Energy per 1,000 tokens over the measured time; None before anything was measured."""
    if energy_tokens <= 0 or energy_mwh <= 0:
        return None
    return energy_mwh / energy_tokens * 1000
