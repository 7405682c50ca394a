"""What the device can spare right now: the readings, and for every job whether its constraints allow training.

``DeviceMonitor`` is the daemon's stateful side of the policy: it reads the sensors once per tick,
keeps the few moments the pure policy needs to remember (since when the device has been idle,
since when each waiting job's resume conditions have held), and returns a ``DeviceState``. The
scheduler only sees ``DeviceState``.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence
from zoneinfo import ZoneInfo

from mftd.policy import UNAVAILABLE_MEANS, Check, Constraints, PolicyParams, Verdict, evaluate, track_idle
from mftd.sensors import Reading, Readings, SensorReader, default_sources
from mftd.status import JobStatus
from mftd.throttle import FULL_SPEED, Throttle
from mftd.timeutil import iso_z, utcnow

if TYPE_CHECKING:
    from mftd.scheduler import JobView
    from mftd.settings import Settings

__all__ = ["DeviceMonitor", "DeviceState", "Reading", "latest_device_state", "read_device_state"]

LocalClock = Callable[[datetime], datetime]


@dataclass(frozen=True)
class DeviceState:
    """The readings at one moment, whether the daemon-wide defaults allow training, and each job's verdict."""

    readings: Mapping[str, Reading] = field(default_factory=dict)
    can_train: bool = True
    reasons: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    jobs: Mapping[int, Verdict] = field(default_factory=dict)
    job_statuses: Mapping[int, str] = field(default_factory=dict)
    throttle: Throttle = FULL_SPEED
    measured_at: Optional[datetime] = None

    def verdict_for(self, job_id: int) -> Verdict:
        """The job's own verdict, or the daemon-wide one for a job the monitor did not see."""
        verdict = self.jobs.get(job_id)
        if verdict is not None:
            return verdict
        return Verdict(self.can_train, self.reasons, self.checks)

    def value(self, name: str) -> Any:
        reading = self.readings.get(name)
        return reading.value if reading is not None and reading.is_available else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "can_train": self.can_train,
            "reasons": list(self.reasons),
            "readings": [asdict(reading) for reading in self.readings.values()],
            "constraints": [_check_dict(check) for check in self.checks],
            "jobs": [
                {
                    "job_id": job_id,
                    "status": self.job_statuses.get(job_id),
                    "allowed": verdict.allowed,
                    "reasons": list(verdict.reasons),
                    "constraints": [_check_dict(check) for check in verdict.checks],
                    "conditions_held_since": iso_z(verdict.held_since),
                    "duty_cycle": verdict.throttle.duty_cycle,
                }
                for job_id, verdict in sorted(self.jobs.items())
            ],
            "throttle": {"duty_cycle": self.throttle.duty_cycle, "reason": self.throttle.reason},
            "measured_at": iso_z(self.measured_at),
        }


def _check_dict(check: Check) -> dict[str, Any]:
    return {"constraint": check.constraint, "holds": check.holds, "detail": check.detail, "if_unavailable": UNAVAILABLE_MEANS.get(check.constraint, "")}


class DeviceMonitor:
    """Reads the sensors and applies every job's constraints, remembering what hysteresis and idleness need.

    Args:
        settings: the constraint defaults and policy knobs.
        sensors: default: the real sources (and ``settings.sensors_file`` first).
        to_local: naive UTC -> local wall-clock time, for ``allowed_hours``.
    """

    def __init__(self, settings: "Settings", sensors: Optional[SensorReader] = None, to_local: Optional[LocalClock] = None):
        self.settings = settings
        self.sensors = sensors or SensorReader(default_sources(settings.data_dir, settings.sensors_file))
        self.to_local = to_local or local_clock(settings.time_zone)
        self.params = PolicyParams.from_settings(settings)
        self.defaults = Constraints.resolve(None, settings)
        self._idle_since: Optional[datetime] = None
        self._held_since: dict[int, datetime] = {}

    def observe(self, jobs: Sequence["JobView"], now: datetime) -> DeviceState:
        """Read the sensors and judge every job that could train (queued, waiting, interrupted, running)."""
        readings = self.sensors.read()
        self._idle_since = track_idle(self._idle_since, readings, now, self.params)
        local_now = self.to_local(now)
        overall = evaluate(self.defaults, readings, now, local_now, self.params, self._idle_since)
        verdicts: dict[int, Verdict] = {}
        statuses: dict[int, str] = {}
        for job in jobs:
            if job.status not in _JUDGED:
                continue
            constraints = Constraints.resolve(job.constraints, self.settings)
            verdict = evaluate(
                constraints, readings, now, local_now, self.params, self._idle_since,
                resuming=job.status == JobStatus.WAITING, held_since=self._held_since.get(job.id),
            )
            verdicts[job.id] = verdict
            statuses[job.id] = job.status.value
        self._held_since = {job_id: verdict.held_since for job_id, verdict in verdicts.items() if verdict.held_since is not None}
        running = [job.id for job in jobs if job.status == JobStatus.RUNNING and job.id in verdicts]
        throttle = verdicts[running[0]].throttle if running else overall.throttle
        return DeviceState(
            readings=dict(readings), can_train=overall.allowed, reasons=overall.reasons, checks=overall.checks,
            jobs=verdicts, job_statuses=statuses, throttle=throttle, measured_at=now,
        )


_JUDGED = frozenset({JobStatus.QUEUED, JobStatus.WAITING, JobStatus.INTERRUPTED, JobStatus.RUNNING})


def local_clock(time_zone: str = "") -> LocalClock:
    """naive UTC -> naive local time in ``time_zone`` (default: the system's)."""
    zone = ZoneInfo(time_zone) if time_zone else None

    def to_local(moment: datetime) -> datetime:
        aware = moment.replace(tzinfo=timezone.utc)
        return (aware.astimezone(zone) if zone else aware.astimezone()).replace(tzinfo=None)

    return to_local


# The daemon publishes each tick's state here, so GET /v1/device shows what the scheduler saw.
_published: dict[Path, DeviceState] = {}
_published_lock = threading.Lock()


def publish_device_state(data_dir: Path, state: DeviceState) -> None:
    with _published_lock:
        _published[data_dir.resolve()] = state


def latest_device_state(data_dir: Path, max_age: timedelta) -> Optional[DeviceState]:
    """The state this process's daemon published last for ``data_dir``, if it is younger than ``max_age``."""
    with _published_lock:
        state = _published.get(data_dir.resolve())
    if state is None or state.measured_at is None or utcnow() - state.measured_at > max_age:
        return None
    return state


def read_device_state(settings: "Settings") -> DeviceState:
    """A one-off reading with the daemon-wide defaults (no jobs, no history): for a process without a running daemon."""
    return DeviceMonitor(settings).observe([], utcnow())
