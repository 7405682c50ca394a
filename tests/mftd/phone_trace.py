"""A day in the life of a phone, minute by minute, and the daemon's real tick replayed over it.

``phone_day`` makes a deterministic trace (seeded): overnight charging until 07:15, a morning
commute, a desk morning, a lunchtime top-up on a desk charger, a hot afternoon, a commute home
charging in a hot car, an evening of use, and the charger again at 23:00. Battery level and
temperature respond to what the phone does, training included (a closed loop): training drains
the battery and warms it, in proportion to its duty cycle.

``replay`` runs the real ``Daemon.tick`` (real SQLite, the real policy and ``decide``) once per
simulated minute with an injected clock, the trace as its only sensor, and ``FakeWorker`` in
place of the training process: it makes one step of progress per minute at full speed (its duty
cycle's share when throttled), needs a minute to load before its first step, and stops within the
minute it is asked to. Nothing sleeps: a day takes a few seconds.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

from mftd.daemon import Daemon
from mftd.db import make_engine, new_session
from mftd.device import DeviceMonitor
from mftd.jobconfig import JobConfig, JobConstraints
from mftd.scheduler import DEVICE_STOP_REQUEST, RunningView, StopJob
from mftd.sensors import ScriptedSource, SensorReader
from mftd.settings import Settings
from mftd.status import JobStatus, set_status
from mftd.tables import Dataset, Job, Model
from mftd.throttle import FULL_SPEED, Throttle

START = datetime(2026, 6, 1, 7, 0)  # the simulated clock is local time (the monitor's to_local is the identity)
MINUTES = 24 * 60


@dataclass(frozen=True)
class Period:
    start: str
    end: str
    ambient_c: float
    active_share: float  # of minutes the user is on the phone
    charger_pct_per_min: float = 0.0  # 0: unplugged


# What the owner does; the battery and its temperature follow from it (and from training).
DAY = (
    Period("07:00", "07:15", 22, 0.3, 1.0),   # end of the night on the charger
    Period("07:15", "08:00", 23, 0.5),        # breakfast, news
    Period("08:00", "09:00", 22, 0.9),        # commute: music, maps, messages
    Period("09:00", "12:30", 24, 0.15),       # at the desk, a glance now and then
    Period("12:30", "13:15", 25, 0.8),        # lunch
    Period("13:15", "14:15", 25, 0.1, 1.0),   # topped up on the desk charger
    Period("14:15", "17:30", 32, 0.15),       # hot afternoon: a sunny office
    Period("17:30", "18:30", 31, 0.9, 0.6),   # commute home: navigation on a car charger in a hot car
    Period("18:30", "23:00", 24, 0.45),       # evening
    Period("23:00", "07:00", 21, 0.0, 1.0),   # the night charger
)


@dataclass(frozen=True)
class Minute:
    """What the trace says about one minute (before the phone model adds training)."""

    at: datetime
    plugged: bool
    charger_pct_per_min: float
    active: bool
    ambient_c: float


def phone_day(seed: int = 7) -> list[Minute]:
    """24 hours from 07:00, one entry per minute; the same seed gives the same day."""
    rng = random.Random(seed)
    minutes = []
    for index in range(MINUTES):
        at = START + timedelta(minutes=index)
        period = _period_at(at)
        minutes.append(
            Minute(
                at=at,
                plugged=period.charger_pct_per_min > 0,
                charger_pct_per_min=period.charger_pct_per_min,
                active=rng.random() < period.active_share,
                ambient_c=period.ambient_c + rng.uniform(-0.5, 0.5),
            )
        )
    return minutes


def _period_at(at: datetime) -> Period:
    clock = at.strftime("%H:%M")
    for period in DAY:
        if period.start <= period.end and period.start <= clock < period.end:
            return period
        if period.start > period.end and (clock >= period.start or clock < period.end):
            return period
    raise ValueError(clock)


@dataclass
class PhoneModel:
    """Battery level and temperature, one minute at a time."""

    battery_percent: float = 100.0
    temperature_c: float = 27.0

    def step(self, minute: Minute, training_duty: float) -> None:
        drain = 0.05 + (0.3 if minute.active else 0.0) + 0.25 * training_duty
        charge = minute.charger_pct_per_min * (1.0 if self.battery_percent < 80 else 0.5)
        self.battery_percent = min(100.0, max(0.0, self.battery_percent + charge - drain))
        charging_heat = 3.0 if minute.plugged and self.battery_percent < 100 else 0.0
        target = minute.ambient_c + 4.0 + charging_heat + (4.0 if minute.active else 0.0) + 7.0 * training_duty
        self.temperature_c += (target - self.temperature_c) * 0.15

    def readings(self, minute: Minute) -> dict[str, Any]:
        return {
            "charging": minute.plugged,
            "battery_percent": round(self.battery_percent),
            "battery_temp_c": round(self.temperature_c, 1),
            "others_cpu_percent": 45.0 if minute.active else 3.0,
            "screen_on": minute.active,
            "free_storage_mb": 20_000,
        }


class FakeWorker:
    """The supervisor's interface over an imaginary worker: one step per full-speed minute, a minute to load."""

    def __init__(self, engine, total_steps: int, load_minutes: int = 1):
        self.engine = engine
        self.total_steps = total_steps
        self.load_minutes = load_minutes
        self.running_job_id: Optional[int] = None
        self.progress = 0.0
        self._started_at: Optional[datetime] = None
        self._stop: Optional[tuple[datetime, str]] = None
        self._last_poll: Optional[datetime] = None
        self._throttle: Throttle = FULL_SPEED

    @property
    def is_training(self) -> bool:
        return self.running_job_id is not None and self._stop is None

    @property
    def duty_cycle(self) -> float:
        """The throttle's share of time spent training (0 when not training)."""
        return self._throttle.duty_cycle if self.is_training else 0.0

    @property
    def training_duty(self) -> float:
        if not self.is_training or self._last_poll is None or self._last_poll < self._started_at + timedelta(minutes=self.load_minutes):
            return 0.0 if not self.is_training else 0.5  # loading the model keeps a core busy too
        return self._throttle.duty_cycle

    def running_view(self) -> Optional[RunningView]:
        if self.running_job_id is None:
            return None
        return RunningView(self.running_job_id, self._started_at, self._stop[0] if self._stop else None)

    def start(self, job_id: int, now: datetime) -> None:
        with new_session(self.engine) as session:
            job = session.get(Job, job_id)
            job.heartbeat_at = now
            job.not_before = None
            set_status(session, job, JobStatus.RUNNING)
        self.running_job_id, self._started_at, self._last_poll, self._stop = job_id, now, now, None
        self._throttle = FULL_SPEED

    def stop(self, job_id: int, reason: str, request: Optional[str] = None, now: Optional[datetime] = None) -> None:
        if self.running_job_id == job_id and self._stop is None:
            self._stop = (now, reason)

    def kill(self, job_id: int, reason: str, now: Optional[datetime] = None) -> None:
        raise AssertionError(f"the simulation never kills a worker ({reason})")

    def set_throttle(self, job_id: int, throttle: Throttle, now: Optional[datetime] = None) -> None:
        if self.running_job_id == job_id and self._stop is None:
            self._throttle = throttle

    def poll(self, now: datetime) -> Optional[JobStatus]:
        if self.running_job_id is None:
            return None
        if self._stop is None:
            trained_from = max(self._last_poll, self._started_at + timedelta(minutes=self.load_minutes))
            self.progress += max(0.0, (now - trained_from).total_seconds() / 60) * self._throttle.duty_cycle
        self._last_poll = now
        done = self.progress >= self.total_steps
        with new_session(self.engine) as session:
            job = session.get(Job, self.running_job_id)
            job.step = min(self.total_steps, int(self.progress))
            job.total_steps = self.total_steps
            job.tokens_seen = job.step * 1000
            job.heartbeat_at = now
            session.add(job)
            session.commit()
            if done:
                new_status, reason = JobStatus.SUCCEEDED, ""
            elif self._stop is not None:
                new_status, reason = JobStatus.WAITING, self._stop[1]
            else:
                return None
            set_status(session, job, new_status, reason)
        self.running_job_id = None
        return new_status

    def shutdown(self) -> None:
        self.running_job_id = None


@dataclass(frozen=True)
class MinuteRecord:
    at: datetime
    charging: bool
    battery_percent: float
    temperature_c: float
    active: bool
    training: bool
    duty: float


@dataclass
class Outcome:
    """What a policy made of the day."""

    name: str
    finished_at: Optional[datetime]
    preemptions: int
    training_minutes: int
    throttled_minutes: int
    battery_percent_used: float
    records: list[MinuteRecord] = field(default_factory=list)
    constraints: Optional[JobConstraints] = None
    settings: Optional[Settings] = None

    @property
    def hours_to_finish(self) -> Optional[float]:
        return None if self.finished_at is None else (self.finished_at - START).total_seconds() / 3600


def replay(
    name: str,
    constraints: JobConstraints,
    settings_overrides: Optional[dict[str, Any]] = None,
    total_steps: int = 240,
    trace: Optional[list[Minute]] = None,
    workdir: Optional[Path] = None,
) -> Outcome:
    """Run one job of ``total_steps`` full-speed minutes through a day, ticking once a minute."""
    trace = trace or phone_day()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        settings = Settings(data_dir=Path(tmp), wake_lock=False, **(settings_overrides or {}))
        settings.ensure_dirs()
        engine = make_engine(settings.db_path)
        try:
            return _replay(name, constraints, settings, engine, total_steps, trace)
        finally:
            engine.dispose()


def _replay(name, constraints, settings, engine, total_steps, trace) -> Outcome:
    phone = PhoneModel()
    current: dict[str, Any] = {}
    monitor = DeviceMonitor(settings, SensorReader([ScriptedSource(lambda: current, name="trace")]), to_local=lambda moment: moment)
    worker = FakeWorker(engine, total_steps)
    daemon = Daemon(settings, engine, supervisor=worker, monitor=monitor)
    job_id = _submit(engine, constraints)
    preemptions, records, finished_at = 0, [], None
    for minute in trace:
        phone.step(minute, worker.training_duty)  # what the last minute did to the phone
        current.clear()
        current.update(phone.readings(minute))
        actions = daemon.tick(now=minute.at)
        preemptions += sum(1 for action in actions if isinstance(action, StopJob) and action.request == DEVICE_STOP_REQUEST)
        records.append(MinuteRecord(minute.at, minute.plugged, phone.battery_percent, phone.temperature_c, minute.active,
                                    worker.is_training, worker.duty_cycle))
        with new_session(engine) as session:
            job = session.get(Job, job_id)
            if job.status == JobStatus.SUCCEEDED:
                finished_at = minute.at
                break
    with new_session(engine) as session:
        job = session.get(Job, job_id)
    return Outcome(
        name=name,
        finished_at=finished_at,
        preemptions=preemptions,
        training_minutes=sum(record.training for record in records),
        throttled_minutes=sum(record.training and record.duty < 1 for record in records),
        battery_percent_used=job.battery_percent_used,
        records=records,
        constraints=constraints,
        settings=settings,
    )


def _submit(engine, constraints: JobConstraints) -> int:
    with new_session(engine) as session:
        model = Model(name="phone-model", path="/nowhere", architecture="Qwen2ForCausalLM", model_type="qwen2",
                      num_parameters=1, dtype="float32", context_length=128, has_chat_template=False)
        dataset = Dataset(name="phone-data", path="/nowhere.jsonl", format="text", num_examples=1, size_bytes=1)
        session.add(model)
        session.add(dataset)
        session.commit()
        job = Job(model_id=model.id, dataset_id=dataset.id, config_json=JobConfig(constraints=constraints).model_dump_json(),
                  created_at=START, updated_at=START)
        session.add(job)
        session.commit()
        return job.id


POLICIES: dict[str, tuple[JobConstraints, dict[str, Any]]] = {
    "defaults: charging or >=30%, <=42 C": (JobConstraints(), {}),
    "charging only": (JobConstraints(require_charging=True), {}),
    "charging + 23:00-07:00": (JobConstraints(require_charging=True, allowed_hours="23:00-07:00"), {}),
    "charging or >=50%, idle": (JobConstraints(min_battery_percent=50, require_idle=True), {}),
    "defaults, no hysteresis/throttle": (JobConstraints(), {"settle_seconds": 0, "resume_margin_temp_c": 0,
                                                             "resume_margin_battery_percent": 0, "min_duty_cycle": 1.0}),
}


def violations(outcome: Outcome) -> list[str]:
    """Minutes the job trained although the phone broke one of its constraints, checked straight from the trace.

    Deliberately not through ``mftd.policy``: the rules are restated here from the constraints' docs.
    """
    from mftd.hours import is_within, parse_hours

    settings, constraints = outcome.settings, outcome.constraints

    def pick(name: str):
        value = getattr(constraints, name)
        return getattr(settings, name) if value is None else value

    windows = parse_hours(pick("allowed_hours"))
    found = []
    for index, record in enumerate(outcome.records):
        if not record.training:
            continue
        level, temperature = round(record.battery_percent), round(record.temperature_c, 1)
        broken = []
        if pick("require_charging") and not record.charging:
            broken.append("not charging")
        if not record.charging and level < pick("min_battery_percent"):
            broken.append(f"battery {level}%")
        if temperature > pick("max_battery_temp_c"):
            broken.append(f"{temperature} °C")
        if not is_within(windows, record.at.time()):
            broken.append("outside the allowed hours")
        if pick("require_idle"):
            recent = outcome.records[max(0, index - int(settings.idle_minutes)): index + 1]
            if len(recent) <= settings.idle_minutes or any(other.active for other in recent):
                broken.append("not idle")
        if broken:
            found.append(f"{record.at:%H:%M}: {', '.join(broken)}")
    return found


def table(outcomes: list[Outcome]) -> str:
    """The outcomes side by side, as a Markdown table."""
    lines = [
        "| policy | finished after | trained (min) | throttled (min) | preemptions | battery used | minutes violating a constraint |",
        "|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        finished = "not within the day" if outcome.finished_at is None else f"{outcome.hours_to_finish:.1f} h ({outcome.finished_at:%H:%M})"
        lines.append(
            f"| {outcome.name} | {finished} | {outcome.training_minutes} | {outcome.throttled_minutes} | "
            f"{outcome.preemptions} | {outcome.battery_percent_used:.0f}% | {len(violations(outcome))} |"
        )
    return "\n".join(lines)
