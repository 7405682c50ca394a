"""Base models: local Hugging Face folders, inspected once and registered by name."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from mftd.modelinfo import inspect_model_folder
from mftd.registry.lookup import check_name, check_name_free, check_unused, get_row, insert
from mftd.settings import Settings
from mftd.tables import Job, Model


def register_model(session: Session, settings: Settings, name: str, path: str | Path) -> Model:
    """Inspect a local Hugging Face folder and register it under ``name``.

    Raises:
        InvalidValueError: the name is not usable.
        ConflictError: the name is taken.
        ModelValidationError: the folder cannot be fine-tuned by mftd (the message says why and how to fix it).
    """
    check_name(name)
    check_name_free(session, Model, name, "model")
    info = inspect_model_folder(path)
    model = Model(
        name=name,
        path=info.path,
        architecture=info.architecture,
        model_type=info.model_type,
        num_parameters=info.num_parameters,
        dtype=info.dtype,
        context_length=info.context_length,
        has_chat_template=info.has_chat_template,
    )
    return insert(session, model, "model")


def list_models(session: Session, skip: int = 0, limit: int = 100) -> tuple[list[Model], int]:
    """A page of models, oldest first, and how many there are in all."""
    models = session.exec(select(Model).order_by(Model.id).offset(skip).limit(limit)).all()
    return list(models), session.exec(select(func.count()).select_from(Model)).one()


def get_model(session: Session, model_id: int) -> Model:
    return get_row(session, Model, model_id, "model")


def delete_model(session: Session, model_id: int) -> None:
    """Forget a model (its folder stays where it is).

    Raises:
        NotFoundError: no such model.
        ConflictError: jobs still reference it.
    """
    model = get_model(session, model_id)
    check_unused(session, Job.model_id, model_id, "model")
    session.delete(model)
    session.commit()
