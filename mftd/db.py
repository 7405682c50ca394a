"""The SQLite database: one file, WAL mode, a busy timeout, shared by the daemon and its workers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, inspect, text
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
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Columns a newer mftd added to an existing table: SQLite adds them in place, with their defaults.

    ``create_all`` creates missing tables only; a database made by an older mftd would otherwise
    fail on the first query that names a new column.
    """
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in SQLModel.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                clause = _default_clause(column)
                nullability = " NOT NULL" if not column.nullable and clause else ""
                connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}{nullability}{clause}'))


def new_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def _default_clause(column) -> str:
    default = column.default.arg if column.default is not None and column.default.is_scalar else None
    if isinstance(default, bool):
        return f" DEFAULT {int(default)}"
    if isinstance(default, (int, float)):
        return f" DEFAULT {default!r}"
    if type(default) is str:
        return " DEFAULT '" + default.replace("'", "''") + "'"
    return ""
