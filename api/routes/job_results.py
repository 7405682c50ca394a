"""Use a succeeded job's weights: generate text, export a merged model. Both run in a child process, never in the daemon."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import SessionDep, SettingsDep
from mftd import job_tools

router = APIRouter(prefix="/jobs", tags=["jobs"])

GENERATE_TIMEOUT_SECONDS = 300.0
EXPORT_TIMEOUT_SECONDS = 1800.0


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000, description="The user message (sent through the chat template if the model has one).")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Longest answer, in tokens.")
    compare: bool = Field(False, description="Also answer with the base model alone.")


class GenerateResponse(BaseModel):
    job_id: int
    text: str = Field(description="The greedy answer with the job's adapter (or fine-tuned model).")
    base_text: Optional[str] = Field(None, description="The base model's answer, when compare was asked for.")


class ExportResponse(BaseModel):
    job_id: int
    path: str = Field(description="A Hugging Face folder that plain transformers loads.")
    artifact: str = Field(description="Its name under /v1/jobs/{id}/artifacts/.")
    merged: bool = Field(description="True when an adapter was merged into the base weights; false for a full fine-tune (already whole).")
    num_parameters: Optional[int] = None


@router.post("/{job_id}/generate", response_model=GenerateResponse)
def generate(session: SessionDep, settings: SettingsDep, job_id: int, request: GenerateRequest) -> GenerateResponse:
    """Answer a prompt with the job's adapter applied (greedy), in a worker process."""
    result = job_tools.job_result(session, settings, job_id)
    session.close()  # the child may take a while; hold no database connection meanwhile
    answer = job_tools.generate_text(result, request.prompt, request.max_new_tokens, request.compare, settings.worker_python, GENERATE_TIMEOUT_SECONDS)
    return GenerateResponse(job_id=job_id, text=answer["text"], base_text=answer.get("base_text") if request.compare else None)


@router.post("/{job_id}/export", response_model=ExportResponse)
def export(session: SessionDep, settings: SettingsDep, job_id: int) -> ExportResponse:
    """Merge the job's LoRA/DoRA adapter into its base model as jobs/<id>/export/ (a full Hugging Face folder)."""
    result = job_tools.job_result(session, settings, job_id)
    session.close()
    answer = job_tools.export_merged(result, settings.worker_python, EXPORT_TIMEOUT_SECONDS)
    return ExportResponse(job_id=job_id, **answer)
