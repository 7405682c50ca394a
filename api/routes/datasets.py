"""Datasets: JSONL files uploaded or named by local path, validated line by line."""

from typing import Annotated, Optional

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status

from api.deps import LimitQuery, SessionDep, SettingsDep, SkipQuery
from api.schemas import DatasetPublic, DatasetsPublic, Message, Name
from mftd import registry
from mftd.jobconfig import DatasetFormat

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", response_model=DatasetPublic, status_code=status.HTTP_201_CREATED)
def create_dataset(
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[Name, Form()],
    file: Annotated[Optional[UploadFile], File(description="A JSONL file to upload.")] = None,
    path: Annotated[Optional[str], Form(description="Or: the path of a local JSONL file, used in place.")] = None,
    format: Annotated[DatasetFormat, Form(description="auto detects the format from the keys.")] = "auto",
) -> DatasetPublic:
    """Validate a JSONL dataset (an upload or a local path) and register it."""
    has_file = file is not None and bool(file.filename)
    if has_file == bool(path):
        raise HTTPException(
            status_code=422,
            detail=[
                {
                    "loc": ["body", "file"],
                    "msg": "give either 'file' (an upload) or 'path' (a local JSONL file), not both and not neither",
                    "type": "value_error",
                }
            ],
        )
    if has_file:
        dataset = registry.register_dataset(session, settings, name, upload=file.file, declared_format=format, upload_name=file.filename)
    else:
        dataset = registry.register_dataset(session, settings, name, source_path=path, declared_format=format)
    return DatasetPublic.model_validate(dataset)


@router.get("", response_model=DatasetsPublic)
def read_datasets(
    session: SessionDep, skip: SkipQuery = 0, limit: LimitQuery = 100
) -> DatasetsPublic:
    """Registered datasets, oldest first."""
    datasets, count = registry.list_datasets(session, skip, limit)
    return DatasetsPublic(data=[DatasetPublic.model_validate(dataset) for dataset in datasets], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def read_dataset(session: SessionDep, dataset_id: int) -> DatasetPublic:
    """One dataset."""
    return DatasetPublic.model_validate(registry.get_dataset(session, dataset_id))


@router.delete("/{dataset_id}", response_model=Message)
def delete_dataset(session: SessionDep, settings: SettingsDep, dataset_id: int) -> Message:
    """Forget a dataset that no job uses; an uploaded file is deleted too."""
    registry.delete_dataset(session, settings, dataset_id)
    return Message(message=f"dataset {dataset_id} deleted")
