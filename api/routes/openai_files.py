"""OpenAI-compatible files: a ``fine-tune`` upload is an mftd dataset, validated line by line, with id ``file-<id>``."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from sqlmodel import Session, col, select

from api.deps import SessionDep, SettingsDep
from api.openai_errors import OpenAIRoute
from api.openai_mapping import FILE_PREFIX, file_object, object_id, parse_object_id
from api.openai_schemas import OpenAIFile, OpenAIFileDeleted, OpenAIFileList
from mftd import registry
from mftd.errors import InvalidValueError
from mftd.tables import Dataset

router = APIRouter(prefix="/files", tags=["openai"], route_class=OpenAIRoute)

FINE_TUNE_PURPOSE = "fine-tune"
MAX_FILES_PER_PAGE = 10_000
NAME_STEM_CHARS = 90


def _dataset_name_for(session: Session, filename: str) -> str:
    """A free dataset name made from the upload's file name: ``train.jsonl`` gives ``train``, then ``train-2``, ..."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePath(filename or "").stem).strip("-._")[:NAME_STEM_CHARS] or "upload"
    taken = set(session.exec(select(Dataset.name).where(col(Dataset.name).startswith(stem))).all())
    if stem not in taken:
        return stem
    number = 2
    while f"{stem}-{number}" in taken:
        number += 1
    return f"{stem}-{number}"


@router.post("", response_model=OpenAIFile, status_code=status.HTTP_200_OK)
def create_file(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A JSONL file of training examples.")],
    purpose: Annotated[str, Form(description="Must be fine-tune.")],
) -> OpenAIFile:
    """Upload a JSONL training file (purpose fine-tune); every line is checked, and a bad file answers 400 naming its lines."""
    if purpose != FINE_TUNE_PURPOSE:
        raise InvalidValueError("purpose", f"purpose {purpose!r} is not supported by mftd; upload training files with purpose 'fine-tune'.")
    name = _dataset_name_for(session, file.filename or "")
    dataset = registry.register_dataset(session, settings, name, upload=file.file)
    return file_object(dataset)


@router.get("", response_model=OpenAIFileList)
def list_files(
    session: SessionDep,
    purpose: Optional[str] = None,
    after: Optional[str] = Query(None, description="A file id: list the files after it in this order."),
    limit: int = Query(MAX_FILES_PER_PAGE, ge=1, le=MAX_FILES_PER_PAGE),
    order: Literal["asc", "desc"] = "desc",
) -> OpenAIFileList:
    """Uploaded and registered datasets as files, newest first by default."""
    if purpose is not None and purpose != FINE_TUNE_PURPOSE:
        return OpenAIFileList(data=[], has_more=False)
    query = select(Dataset)
    if after is not None:
        cursor = parse_object_id(after, FILE_PREFIX, "file")
        query = query.where(col(Dataset.id) < cursor if order == "desc" else col(Dataset.id) > cursor)
    query = query.order_by(col(Dataset.id).desc() if order == "desc" else col(Dataset.id)).limit(limit + 1)
    datasets = list(session.exec(query).all())
    files = [file_object(dataset) for dataset in datasets[:limit]]
    return OpenAIFileList(
        data=files,
        has_more=len(datasets) > limit,
        first_id=files[0].id if files else None,
        last_id=files[-1].id if files else None,
    )


@router.get("/{file_id}", response_model=OpenAIFile)
def retrieve_file(session: SessionDep, file_id: str) -> OpenAIFile:
    """One file."""
    return file_object(registry.get_dataset(session, parse_object_id(file_id, FILE_PREFIX, "file")))


@router.delete("/{file_id}", response_model=OpenAIFileDeleted)
def delete_file(session: SessionDep, settings: SettingsDep, file_id: str) -> OpenAIFileDeleted:
    """Delete a file that no job uses."""
    dataset_id = parse_object_id(file_id, FILE_PREFIX, "file")
    registry.delete_dataset(session, settings, dataset_id)
    return OpenAIFileDeleted(id=object_id(FILE_PREFIX, dataset_id), deleted=True)
