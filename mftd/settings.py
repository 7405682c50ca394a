"""The daemon's settings: one typed object, read from flags and ``MFTD_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mftd.hours import parse_hours


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/mftd``, or ``~/.local/share/mftd``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "mftd"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Share of total memory a job may use by default: a phone needs the rest for the system and the app in front.
DEFAULT_MEMORY_SHARE = 0.4


def total_memory_mb() -> Optional[float]:
    """Physical memory in MB (sysconf, which Android's bionic answers too); None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


class Settings(BaseSettings):
    """Daemon-wide settings. Every field can be set as ``MFTD_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MFTD_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the database, token, models, datasets and job outputs live.")
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on. Anything but loopback needs allow_remote.")
    port: int = Field(8765, ge=0, le=65535, description="Port the HTTP API listens on (0 picks a free one).")
    allow_remote: bool = Field(False, description="Allow listening on a non-loopback address (anyone on the network who has the token can then train on this device).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the HTTP API answers to besides its loopback names (127.0.0.1, localhost, [::1]); "
        "any other Host header is refused, against DNS rebinding. As JSON in the environment: MFTD_ALLOWED_HOSTS='[\"phone.lan\"]'.",
    )
    tick_seconds: float = Field(2.0, gt=0, description="How often the scheduler looks at the queue and the running worker.")
    heartbeat_timeout_seconds: float = Field(180.0, gt=0, description="A worker silent this long is killed and its job marked interrupted.")
    stop_grace_seconds: float = Field(120.0, gt=0, description="How long a stopping worker may take to checkpoint before it is killed.")
    max_interruptions: int = Field(5, ge=0, description="How many times a job may be interrupted without progress before it fails.")
    worker_python: str = Field("", description="Python interpreter for training workers (default: the daemon's own).")
    log_level: str = Field("info", description="Daemon log level: debug, info, warning or error.")

    # Device policy: the defaults of every job's constraints (mftd.jobconfig.JobConstraints), then hysteresis.
    require_charging: bool = Field(False, description="Default: train only on external power.")
    min_battery_percent: float = Field(30.0, ge=0, le=100, description="Default: on battery, train only at or above this level (0 disables).")
    max_battery_temp_c: float = Field(42.0, gt=0, le=100, description="Default: stop training above this battery temperature.")
    throttle_battery_temp_c: float = Field(38.0, gt=0, le=100, description="Default soft limit: above it training slows down (pauses between steps).")
    require_idle: bool = Field(False, description="Default: train only while other processes leave the CPU idle and the screen is off.")
    allowed_hours: str = Field("", description="Default: local times training may run, e.g. 23:00-07:00 ('' for any time).")
    min_free_storage_mb: float = Field(500.0, ge=0, description="Default: train only with this much free storage.")
    idle_cpu_percent: float = Field(20.0, ge=0, le=100, description="Other processes below this share of all cores count as idle.")
    idle_minutes: float = Field(5.0, ge=0, description="How long the load must stay below idle_cpu_percent to count as idle.")
    settle_seconds: float = Field(300.0, ge=0, description="After a device stop, conditions must hold this long (with the margins) before the job resumes.")
    resume_margin_temp_c: float = Field(3.0, ge=0, description="After a stop, resume only this far below max_battery_temp_c.")
    resume_margin_battery_percent: float = Field(5.0, ge=0, description="After a stop on battery, resume only this far above min_battery_percent.")
    min_duty_cycle: float = Field(0.25, gt=0, le=1, description="Share of time spent training at the hard temperature limit when throttled (1 disables throttling).")
    sensors_file: Optional[Path] = Field(None, description="A JSON file of scripted readings that override the real sensors (tests, demos); see mftd.sensors.scripted.")
    time_zone: str = Field("", description="IANA time zone for allowed_hours (default: the system's local time).")
    memory_budget_mb: Optional[int] = Field(
        None, ge=64,
        description="Default peak memory of a training run in MB, for jobs that set no memory_budget_mb "
        f"(default: {int(DEFAULT_MEMORY_SHARE * 100)}% of the device's total memory, leaving the rest to Android and the apps in use).",
    )
    wake_lock: bool = Field(True, description="Hold termux-wake-lock while a worker trains (where the command exists).")

    @field_validator("allowed_hours")
    @classmethod
    def _check_hours(cls, value: str) -> str:
        parse_hours(value)
        return value

    @field_validator("time_zone")
    @classmethod
    def _check_time_zone(cls, value: str) -> str:
        if value:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as error:
                raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin; pip install tzdata if none is found)") from error
        return value

    @property
    def default_memory_budget_mb(self) -> int:
        """``memory_budget_mb`` if set, else DEFAULT_MEMORY_SHARE of total memory (4 GB when that cannot be read)."""
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb
        total = total_memory_mb()
        return int(total * DEFAULT_MEMORY_SHARE) if total else 4096

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mftd.db"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "token"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(job_id)

    def ensure_dirs(self) -> None:
        """Create the data dir layout (private to this user)."""
        for path in (self.data_dir, self.models_dir, self.datasets_dir, self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
