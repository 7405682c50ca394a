"""Device policy: may a job train now, and how fast. Pure functions of constraints, readings and the clock.

The constraints follow Android's JobScheduler (charging, battery not low, device idle, storage not
low) plus what training needs (battery temperature, hours of the day). What an unavailable reading
means is fixed per constraint (``UNAVAILABLE_MEANS``). Hysteresis: a job the device stopped
(``waiting``) resumes only after the conditions, with margins (cooler, fuller), have held for a
settle period; the caller keeps the "held since" moment and hands it back on the next tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Optional

from mftd.hours import HourWindow, is_within, parse_hours
from mftd.sensors.base import Readings
from mftd.throttle import FULL_SPEED, Throttle

if TYPE_CHECKING:
    from mftd.jobconfig import JobConstraints
    from mftd.settings import Settings

UNAVAILABLE_MEANS = {
    "require_charging": "fails: an unknown charging state counts as not charging",
    "min_battery_percent": "fails unless charging: an unknown level on battery counts as too low",
    "max_battery_temp_c": "holds, marked as not enforced: machines without a battery sensor could never train otherwise",
    "throttle_battery_temp_c": "no throttling",
    "require_idle": "fails: an unknown load counts as busy (Android hides it from apps without root)",
    "allowed_hours": "never unavailable: it is the clock",
    "min_free_storage_mb": "fails: unknown free storage counts as too little",
}


@dataclass(frozen=True)
class Constraints:
    """A job's constraints with every default filled in from the settings."""

    require_charging: bool = False
    min_battery_percent: float = 0.0
    max_battery_temp_c: float = 100.0
    throttle_battery_temp_c: float = 100.0
    require_idle: bool = False
    allowed_hours: tuple[HourWindow, ...] = ()
    allowed_hours_text: str = ""
    min_free_storage_mb: float = 0.0

    @classmethod
    def resolve(cls, job: Optional["JobConstraints"], defaults: "Settings") -> "Constraints":
        def pick(name: str):
            value = getattr(job, name, None) if job is not None else None
            return getattr(defaults, name) if value is None else value

        hours = pick("allowed_hours")
        return cls(
            require_charging=pick("require_charging"),
            min_battery_percent=pick("min_battery_percent"),
            max_battery_temp_c=pick("max_battery_temp_c"),
            throttle_battery_temp_c=pick("throttle_battery_temp_c"),
            require_idle=pick("require_idle"),
            allowed_hours=parse_hours(hours),
            allowed_hours_text=hours,
            min_free_storage_mb=pick("min_free_storage_mb"),
        )


@dataclass(frozen=True)
class PolicyParams:
    """Daemon-wide knobs: idleness, hysteresis and throttling."""

    idle_cpu_percent: float = 20.0
    idle_minutes: float = 5.0
    settle_seconds: float = 300.0
    resume_margin_temp_c: float = 3.0
    resume_margin_battery_percent: float = 5.0
    min_duty_cycle: float = 0.25

    @classmethod
    def from_settings(cls, settings: "Settings") -> "PolicyParams":
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Check:
    """One constraint at one moment: whether it holds, in words."""

    constraint: str
    holds: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    """Whether a job may train now, why not, and how fast.

    ``held_since`` is the hysteresis memory: since when the stricter resume conditions have held
    (None when they do not, or the job is not resuming). Hand it back on the next evaluation.
    """

    allowed: bool
    reasons: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    held_since: Optional[datetime] = None
    throttle: Throttle = FULL_SPEED


ALLOWED = Verdict(True)


def track_idle(low_since: Optional[datetime], readings: Readings, now: datetime, params: PolicyParams) -> Optional[datetime]:
    """Since when other processes' load has stayed under the idle threshold (with the screen not on); None while busy."""
    load = readings.value("others_cpu_percent")
    if load is None or load >= params.idle_cpu_percent or readings.value("screen_on") is True:
        return None
    return low_since or now


def evaluate(
    constraints: Constraints,
    readings: Readings,
    now: datetime,
    local_now: datetime,
    params: PolicyParams,
    idle_since: Optional[datetime] = None,
    resuming: bool = False,
    held_since: Optional[datetime] = None,
) -> Verdict:
    """May a job with ``constraints`` train at ``now``?

    Args:
        constraints: the job's resolved constraints.
        readings: the current sensor readings.
        now: naive UTC, for durations.
        local_now: the same moment in local time, for ``allowed_hours``.
        params: idle, hysteresis and throttle knobs.
        idle_since: from ``track_idle``.
        resuming: the device stopped this job (it is waiting): apply the margins and the settle period.
        held_since: the previous verdict's ``held_since`` for this job.

    Returns:
        The verdict; its ``held_since`` is the memory for the next call.
    """
    throttle = throttle_for(constraints, readings, params.min_duty_cycle)
    checks = check_constraints(constraints, readings, now, local_now, params, idle_since, resuming)
    failed = tuple(check.detail for check in checks if not check.holds)
    if failed:
        return Verdict(False, failed, checks, None, throttle)
    if not resuming:
        return Verdict(True, (), checks, None, throttle)
    since = held_since or now
    held = (now - since).total_seconds()
    if held < params.settle_seconds:
        reason = f"conditions have held for {held:.0f} s; the job resumes once they have held for {params.settle_seconds:g} s"
        return Verdict(False, (reason,), checks, since, throttle)
    return Verdict(True, (), checks, since, throttle)


def check_constraints(
    constraints: Constraints,
    readings: Readings,
    now: datetime,
    local_now: datetime,
    params: PolicyParams,
    idle_since: Optional[datetime] = None,
    resuming: bool = False,
) -> tuple[Check, ...]:
    """Every enabled constraint, checked; with ``resuming``, against the stricter resume limits."""
    checks = []
    charging = readings.value("charging")
    if constraints.require_charging:
        checks.append(_check_charging(charging, readings))
    if constraints.min_battery_percent > 0:
        margin = params.resume_margin_battery_percent if resuming else 0.0
        checks.append(_check_battery(constraints.min_battery_percent, margin, charging, readings))
    if constraints.max_battery_temp_c < 100:
        margin = params.resume_margin_temp_c if resuming else 0.0
        checks.append(_check_temperature(constraints.max_battery_temp_c, margin, readings))
    if constraints.require_idle:
        checks.append(_check_idle(readings, now, params, idle_since))
    if constraints.allowed_hours:
        inside = is_within(constraints.allowed_hours, local_now.time())
        where = "inside" if inside else "outside"
        checks.append(Check("allowed_hours", inside, f"{local_now:%H:%M} is {where} the allowed hours {constraints.allowed_hours_text}"))
    if constraints.min_free_storage_mb > 0:
        checks.append(_check_storage(constraints.min_free_storage_mb, readings))
    return tuple(checks)


def throttle_for(constraints: Constraints, readings: Readings, min_duty_cycle: float) -> Throttle:
    """Between the soft and the hard temperature limit, train a shrinking share of the time (down to ``min_duty_cycle``)."""
    temperature = readings.value("battery_temp_c")
    soft, hard = constraints.throttle_battery_temp_c, constraints.max_battery_temp_c
    if temperature is None or min_duty_cycle >= 1 or soft >= hard or temperature <= soft:
        return FULL_SPEED
    fraction = min(1.0, (temperature - soft) / (hard - soft))
    duty = round(1 - (1 - min_duty_cycle) * fraction, 3)
    return Throttle(duty, f"battery {temperature:g} °C is above the soft limit {soft:g} °C: training {duty:.0%} of the time")


def _check_charging(charging: Optional[bool], readings: Readings) -> Check:
    if charging is None:
        return Check("require_charging", False, f"cannot tell whether the device is charging ({readings.why_unavailable('charging')})")
    return Check("require_charging", bool(charging), "charging" if charging else "not charging")


def _check_battery(minimum: float, margin: float, charging: Optional[bool], readings: Readings) -> Check:
    if charging:
        return Check("min_battery_percent", True, "charging, so the battery level does not matter")
    limit = minimum + margin
    level = readings.value("battery_percent")
    plugged = "not charging" if charging is False else "the charging state is unknown"
    if level is None:
        return Check("min_battery_percent", False, f"battery level unknown ({readings.why_unavailable('battery_percent')}) and {plugged}")
    if level < limit:
        extra = f" ({minimum:g}% plus a {margin:g}% margin to resume)" if margin else ""
        return Check("min_battery_percent", False, f"battery {level:g}% is below {limit:g}%{extra} and {plugged}")
    return Check("min_battery_percent", True, f"battery {level:g}% is at least {limit:g}%")


def _check_temperature(maximum: float, margin: float, readings: Readings) -> Check:
    temperature = readings.value("battery_temp_c")
    if temperature is None:
        return Check("max_battery_temp_c", True, f"battery temperature unknown, limit not enforced ({readings.why_unavailable('battery_temp_c')})")
    limit = maximum - margin
    if temperature > limit:
        if margin:
            return Check("max_battery_temp_c", False, f"battery {temperature:g} °C must cool to {limit:g} °C ({margin:g} °C under the {maximum:g} °C limit) to resume")
        return Check("max_battery_temp_c", False, f"battery {temperature:g} °C is above {limit:g} °C")
    return Check("max_battery_temp_c", True, f"battery {temperature:g} °C is at most {limit:g} °C")


def _check_idle(readings: Readings, now: datetime, params: PolicyParams, idle_since: Optional[datetime]) -> Check:
    if readings.value("screen_on") is True:
        return Check("require_idle", False, "the screen is on")
    load = readings.value("others_cpu_percent")
    if load is None:
        return Check("require_idle", False, f"cannot tell whether the device is idle ({readings.why_unavailable('others_cpu_percent')})")
    if load >= params.idle_cpu_percent or idle_since is None:
        return Check("require_idle", False, f"other processes use {load:g}% of the CPU (idle is under {params.idle_cpu_percent:g}%)")
    minutes = (now - idle_since).total_seconds() / 60
    if minutes < params.idle_minutes:
        return Check("require_idle", False, f"idle for {minutes:.1f} of the {params.idle_minutes:g} minutes it takes")
    return Check("require_idle", True, f"idle for {minutes:.0f} minutes (other processes at {load:g}% CPU)")


def _check_storage(minimum: float, readings: Readings) -> Check:
    free = readings.value("free_storage_mb")
    if free is None:
        return Check("min_free_storage_mb", False, f"free storage unknown ({readings.why_unavailable('free_storage_mb')})")
    if free < minimum:
        return Check("min_free_storage_mb", False, f"{free:g} MB free is under the {minimum:g} MB a job needs")
    return Check("min_free_storage_mb", True, f"{free:g} MB free")
