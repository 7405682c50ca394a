"""Shared by the registry modules: name rules, lookups by id or name with messages that list what exists, unique inserts."""

from __future__ import annotations

import re
from typing import Union

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, select

from mftd.errors import ConflictError, InvalidValueError, NotFoundError
from mftd.status import JobStatus
from mftd.tables import Job

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
MAX_NAMES_IN_MESSAGE = 20
MAX_ID = 2**63 - 1

Reference = Union[int, str]
"""A model or dataset given by id, or by name."""


def check_name(name: str, field: str = "name") -> str:
    """``name`` if it is usable as a model or dataset name (and as a file name).

    Raises:
        InvalidValueError: it is empty, too long, or has characters other than letters, digits, ``.``, ``_`` and ``-``.
    """
    if not re.match(NAME_PATTERN, name or ""):
        raise InvalidValueError(
            field,
            f"{field} {name!r} is not usable: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return name


def get_row(session: Session, table: type[SQLModel], row_id: int, what: str):
    """The row of ``table`` with ``row_id``, or a NotFoundError that lists the rows that exist."""
    # SQLite integers are 64-bit; a larger id would make the driver raise instead of finding nothing.
    row = session.get(table, row_id) if 0 < row_id <= MAX_ID else None
    if row is None:
        raise NotFoundError(f"{what} {row_id} does not exist. {existing(session, table, what)}")
    return row


def existing(session: Session, table: type[SQLModel], what: str) -> str:
    """A sentence listing the first rows of ``table`` by id and name, for error messages."""
    rows = session.exec(select(table).order_by(table.id).limit(MAX_NAMES_IN_MESSAGE + 1)).all()
    if not rows:
        return f"No {what}s are registered."
    named = [f"{row.id} ({row.name})" if getattr(row, "name", None) else str(row.id) for row in rows]
    more = " and more" if len(named) > MAX_NAMES_IN_MESSAGE else ""
    return f"Existing {what}s: {', '.join(named[:MAX_NAMES_IN_MESSAGE])}{more}."


def resolve(session: Session, table: type[SQLModel], reference: Reference, what: str):
    """A row by id (an int, or digits that are not a name) or by name."""
    if isinstance(reference, int) and not isinstance(reference, bool):
        return get_row(session, table, reference, what)
    row = session.exec(select(table).where(table.name == reference)).first()
    if row is None and str(reference).isdigit() and 0 < int(reference) <= MAX_ID:
        row = session.get(table, int(reference))
    if row is None:
        raise NotFoundError(f"no {what} has the name or id {reference!r}. {existing(session, table, what)}")
    return row


def check_name_free(session: Session, table: type[SQLModel], name: str, what: str) -> None:
    """Raise ConflictError if a row of ``table`` already has ``name``."""
    taken = session.exec(select(table).where(table.name == name)).first()
    if taken is not None:
        raise ConflictError(f"a {what} named {name!r} already exists (id {taken.id}); pick another name or delete it first.")


def insert(session: Session, row: SQLModel, what: str):
    """Add and commit ``row``; a unique-name clash (two requests racing) becomes a ConflictError."""
    session.add(row)
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise ConflictError(f"a {what} named {getattr(row, 'name', '')!r} already exists; pick another name.") from error
    session.refresh(row)
    return row


def jobs_using(session: Session, column, row_id: int) -> tuple[list[Job], list[Job]]:
    """(unfinished, finished) jobs whose ``column`` is ``row_id``."""
    jobs = session.exec(select(Job).where(column == row_id).order_by(Job.id)).all()
    unfinished = [job for job in jobs if not JobStatus(job.status).is_final]
    finished = [job for job in jobs if JobStatus(job.status).is_final]
    return unfinished, finished


def check_unused(session: Session, column, row_id: int, what: str) -> None:
    """Raise ConflictError if any job references the row (the foreign key would refuse the delete anyway)."""
    unfinished, finished = jobs_using(session, column, row_id)
    if unfinished:
        listed = ", ".join(f"{job.id} ({JobStatus(job.status).value})" for job in unfinished)
        raise ConflictError(f"{what} {row_id} is used by unfinished jobs {listed}; cancel them first.")
    if finished:
        listed = ", ".join(str(job.id) for job in finished)
        raise ConflictError(f"{what} {row_id} is referenced by finished jobs {listed}; delete those jobs first.")
