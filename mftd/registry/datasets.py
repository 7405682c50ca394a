"""Datasets: JSONL files uploaded into the data dir or used in place, validated before they are registered."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Optional

from sqlalchemy import func
from sqlmodel import Session, select

from mftd.datasets import DatasetInfo, validate_jsonl
from mftd.errors import ConflictError, InvalidValueError
from mftd.registry.lookup import check_name, check_name_free, check_unused, get_row, insert
from mftd.settings import Settings
from mftd.tables import Dataset, Job

COPY_CHUNK_BYTES = 1 << 20


def register_dataset(
    session: Session,
    settings: Settings,
    name: str,
    *,
    source_path: Optional[str | Path] = None,
    upload: Optional[bytes | BinaryIO] = None,
    declared_format: str = "auto",
    upload_name: Optional[str] = None,
) -> Dataset:
    """Validate a JSONL dataset and register it under ``name``.

    An upload is validated in a temporary file and only then moved to
    ``<datasets dir>/<name>.jsonl``, so a bad upload leaves nothing behind. A local file is
    validated and used where it is.

    Args:
        source_path: a local JSONL file (exclusive with ``upload``).
        upload: the file's bytes, or a binary stream to copy them from.
        declared_format: ``auto`` to detect the format, or the format every line must have.
        upload_name: the uploaded file's own name, for messages.

    Raises:
        InvalidValueError: the name is not usable, or neither or both of source_path and upload were given.
        ConflictError: the name is taken.
        DatasetValidationError: the file has bad lines (all listed in ``problems``).
    """
    check_name(name)
    if (source_path is None) == (upload is None):
        raise InvalidValueError("file", "give either a file to upload or the path of a local file, not both and not neither.")
    check_name_free(session, Dataset, name, "dataset")
    if source_path is not None:
        info = validate_jsonl(source_path, declared_format)
        return _insert_dataset(session, name, info)
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    target = settings.datasets_dir / f"{name}.jsonl"
    temp_path = _write_upload(settings.datasets_dir, upload)
    try:
        info = validate_jsonl(temp_path, declared_format, display_name=upload_name or f"upload for {name!r}")
        os.replace(temp_path, target)
    finally:
        if temp_path.exists():
            temp_path.unlink()
    info = dataclasses.replace(info, path=str(target.resolve()))
    try:
        return _insert_dataset(session, name, info)
    except ConflictError:
        target.unlink(missing_ok=True)
        raise


def _write_upload(folder: Path, upload: bytes | BinaryIO) -> Path:
    descriptor, temp_name = tempfile.mkstemp(prefix=".upload-", suffix=".jsonl.tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as file:
            if isinstance(upload, (bytes, bytearray, memoryview)):
                file.write(upload)
            else:
                shutil.copyfileobj(upload, file, COPY_CHUNK_BYTES)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(temp_name)
        raise
    return Path(temp_name)


def _insert_dataset(session: Session, name: str, info: DatasetInfo) -> Dataset:
    dataset = Dataset(
        name=name,
        path=info.path,
        format=info.format,
        num_examples=info.num_examples,
        size_bytes=info.size_bytes,
        longest_example_chars=info.longest_example_chars,
    )
    return insert(session, dataset, "dataset")


def list_datasets(session: Session, skip: int = 0, limit: int = 100) -> tuple[list[Dataset], int]:
    """A page of datasets, oldest first, and how many there are in all."""
    datasets = session.exec(select(Dataset).order_by(Dataset.id).offset(skip).limit(limit)).all()
    return list(datasets), session.exec(select(func.count()).select_from(Dataset)).one()


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    return get_row(session, Dataset, dataset_id, "dataset")


def delete_dataset(session: Session, settings: Settings, dataset_id: int) -> None:
    """Forget a dataset; an uploaded file is deleted, a file registered by path is left alone.

    Raises:
        NotFoundError: no such dataset.
        ConflictError: jobs still reference it.
    """
    dataset = get_dataset(session, dataset_id)
    check_unused(session, Job.dataset_id, dataset_id, "dataset")
    session.delete(dataset)
    session.commit()
    file = Path(dataset.path)
    if file.parent.resolve() == settings.datasets_dir.resolve():
        file.unlink(missing_ok=True)
