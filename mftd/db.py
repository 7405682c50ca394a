"""The SQLite database: one file, WAL mode, a busy timeout, shared by the daemon and its workers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

import mftd.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

BUSY_TIMEOUT_MS = 30_000


def make_engine(db_path: Path) -> Engine:
    """An engine for ``db_path`` with WAL journaling and a busy timeout on every connection; creates the tables."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        f"sqlite:///{db_path}",
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _setup_connection(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    SQLModel.metadata.create_all(engine)
    return engine


def new_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)
