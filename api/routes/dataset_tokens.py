"""A dataset's token counts under one registered model's tokenizer, counted in a child process."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep
from mftd import registry
from mftd.job_tools import run_json_child
from mftd.registry.lookup import resolve
from mftd.tables import Model

router = APIRouter(prefix="/datasets", tags=["datasets"])

COUNT_TIMEOUT_SECONDS = 600.0


class DatasetTokensPublic(BaseModel):
    dataset_id: int
    model: str
    examples: int
    tokens: int = Field(description="All tokens, as the model's tokenizer and chat template produce them.")
    loss_tokens: int = Field(description="Tokens that carry loss (completions, assistant turns).")
    longest_example_tokens: int
    longer_than_max_seq_len: int = Field(description="Examples longer than max_seq_len (the model's context length unless given).")
    max_seq_len: Optional[int]
    used_fallback_chat_template: bool = Field(description="Chat data rendered with the 'role: content' fallback (the model has no chat template).")


@router.get("/{dataset_id}/tokens", response_model=DatasetTokensPublic)
def read_dataset_tokens(
    session: SessionDep,
    settings: SettingsDep,
    dataset_id: int,
    model: str = Query(min_length=1, description="A registered model, by name or id."),
    max_seq_len: Optional[int] = Query(None, ge=1, description="Count examples longer than this (default: the model's context length)."),
) -> DatasetTokensPublic:
    """Count the dataset's tokens with a registered model's tokenizer."""
    dataset = registry.get_dataset(session, dataset_id)
    model_row: Model = resolve(session, Model, model, "model")
    limit = max_seq_len or model_row.context_length or None
    arguments = ["-m", "jobs.count_tokens", "--model", model_row.path, "--dataset", dataset.path]
    if limit:
        arguments += ["--max-seq-len", str(limit)]
    session.close()
    counts = run_json_child(settings.worker_python, arguments, COUNT_TIMEOUT_SECONDS, "token count")
    return DatasetTokensPublic(dataset_id=dataset_id, model=model_row.name, **counts)
