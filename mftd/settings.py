"""The daemon's settings: one typed object, read from flags and ``MFTD_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
