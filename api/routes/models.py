"""Base models: local Hugging Face folders registered by path, or GGUF files imported once."""

from fastapi import APIRouter, Response, status

from api.deps import EngineDep, LimitQuery, NotifyChangeDep, SessionDep, SettingsDep, SkipQuery
from api.schemas import Message, ModelCreate, ModelImport, ModelPublic, ModelsPublic
from mftd import registry
from mftd.model_import import is_gguf_path, start_import

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", response_model=ModelPublic, status_code=status.HTTP_201_CREATED)
def create_model(
    session: SessionDep, engine: EngineDep, settings: SettingsDep, notify_change: NotifyChangeDep, model_in: ModelCreate, response: Response
) -> ModelPublic:
    """Inspect a local Hugging Face folder and register it; a .gguf path starts an import (202)."""
    if is_gguf_path(model_in.path):
        response.status_code = status.HTTP_202_ACCEPTED
        return ModelPublic.model_validate(start_import(session, engine, settings, model_in.name, model_in.path, notify_change))
    model = registry.register_model(session, settings, model_in.name, model_in.path)
    return ModelPublic.model_validate(model)


@router.post("/import", response_model=ModelPublic, status_code=status.HTTP_202_ACCEPTED)
def import_model(
    session: SessionDep, engine: EngineDep, settings: SettingsDep, notify_change: NotifyChangeDep, model_in: ModelImport
) -> ModelPublic:
    """Convert a GGUF file into a Hugging Face folder under the data dir, in a child process; poll the model for progress."""
    return ModelPublic.model_validate(start_import(session, engine, settings, model_in.name, model_in.path, notify_change))


@router.get("", response_model=ModelsPublic)
def read_models(
    session: SessionDep, skip: SkipQuery = 0, limit: LimitQuery = 100
) -> ModelsPublic:
    """Registered models, oldest first."""
    models, count = registry.list_models(session, skip, limit)
    return ModelsPublic(data=[ModelPublic.model_validate(model) for model in models], count=count)


@router.get("/{model_id}", response_model=ModelPublic)
def read_model(session: SessionDep, model_id: int) -> ModelPublic:
    """One model."""
    return ModelPublic.model_validate(registry.get_model(session, model_id))


@router.delete("/{model_id}", response_model=Message)
def delete_model(session: SessionDep, model_id: int) -> Message:
    """Forget a model that no job uses (its folder is left alone)."""
    registry.delete_model(session, model_id)
    return Message(message=f"model {model_id} deleted")
