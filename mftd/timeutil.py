"""Time in mftd: naive UTC datetimes everywhere (SQLite keeps no time zone), ISO 8601 with ``Z`` on the wire."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (what SQLite gives back)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def as_naive_utc(moment: datetime) -> datetime:
    """``moment`` as naive UTC, whether it came aware or naive (naive is taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def iso_z(moment: datetime | None) -> str | None:
    """ISO 8601 with a ``Z`` suffix for a naive UTC datetime."""
    if moment is None:
        return None
    return as_naive_utc(moment).isoformat(timespec="milliseconds") + "Z"
