"""Base models: local Hugging Face folders registered by path."""

from fastapi import APIRouter, status

from api.deps import LimitQuery, SessionDep, SettingsDep, SkipQuery
from api.schemas import Message, ModelCreate, ModelPublic, ModelsPublic
from mftd import registry

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", response_model=ModelPublic, status_code=status.HTTP_201_CREATED)
def create_model(session: SessionDep, settings: SettingsDep, model_in: ModelCreate) -> ModelPublic:
    """Inspect a local Hugging Face folder and register it."""
    model = registry.register_model(session, settings, model_in.name, model_in.path)
    return ModelPublic.model_validate(model)


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
