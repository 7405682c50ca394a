"""Request and response models of the OpenAI-compatible fine-tuning subset, shaped like the ``openai`` package's types.

Field names, object types and status values follow ``openai.types`` (``FileObject``,
``fine_tuning.FineTuningJob``, ``FineTuningJobEvent``, ``jobs.FineTuningJobCheckpoint``), so the
official client parses them unchanged. How mftd's jobs map onto them is in ``api.openai_mapping``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from mftd.registry import MAX_ID

Auto = Literal["auto"]


class OpenAIFile(BaseModel):
    id: str = Field(description="file-<dataset id>.")
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["processed"] = Field("processed", description="Always processed: a file is validated when it is uploaded.")
    status_details: Optional[str] = None
    expires_at: Optional[int] = None


class OpenAIFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIFile]
    has_more: bool
    first_id: Optional[str] = None
    last_id: Optional[str] = None


class OpenAIFileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters; see ``api.openai_mapping`` for how each becomes an mftd job config field."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Union[Auto, Annotated[float, Field(gt=0, le=1000)]] = Field("auto", description="Passes over the file (mftd: epochs; auto = 1).")
    batch_size: Union[Auto, Annotated[int, Field(ge=1, le=4096)]] = Field(
        "auto", description="Examples per optimizer step (mftd: micro-batches of 1 accumulated this many times; auto = 4)."
    )
    learning_rate_multiplier: Union[Auto, Annotated[float, Field(gt=0, le=5000)]] = Field(
        "auto", description="mftd's learning rate is 2e-4 times this (auto = 1)."
    )


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Optional[Hyperparameters] = None


class Method(BaseModel):
    type: str = Field(description="Only supervised is supported.")
    supervised: Optional[SupervisedMethod] = None
    dpo: Optional[dict[str, Any]] = None
    reinforcement: Optional[dict[str, Any]] = None


class FineTuningJobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs`` as the openai package sends it, plus the optional ``mftd`` extension."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=100, description="A registered mftd model's name.")
    training_file: str = Field(min_length=1, max_length=100, description="A file id from POST /v1/files (file-<id>).")
    hyperparameters: Optional[Hyperparameters] = Field(None, description="Deprecated by OpenAI in favour of method; both work.")
    method: Optional[Method] = None
    seed: Optional[int] = Field(None, ge=0, le=MAX_ID)
    suffix: Optional[str] = Field(None, max_length=64, description="Becomes the mftd job's name and part of fine_tuned_model.")
    validation_file: Optional[str] = Field(None, description="Not supported yet: must be left out.")
    integrations: Optional[list[dict[str, Any]]] = Field(None, description="Not supported: must be left out or empty.")
    metadata: Optional[dict[str, str]] = Field(None, description="Not stored by mftd: must be left out or empty.")
    mftd: Optional[dict[str, Any]] = Field(
        None,
        description="mftd extension (extra_body={'mftd': {...}} in the openai client): any mftd job config field "
        "(max_steps, method, lora_rank, max_seq_len, ...) and priority; it wins over the mapped hyperparameters.",
    )


class JobError(BaseModel):
    code: str
    message: str
    param: Optional[str] = None


class ReportedHyperparameters(BaseModel):
    n_epochs: Union[int, float]
    batch_size: int
    learning_rate_multiplier: float


class ReportedSupervisedMethod(BaseModel):
    hyperparameters: ReportedHyperparameters


class ReportedMethod(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: ReportedSupervisedMethod


class FineTuningJob(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str = Field(description="ftjob-<mftd job id>.")
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: Optional[JobError] = None
    fine_tuned_model: Optional[str] = Field(None, description="Set once the job succeeded: ft:<model>:mftd:<suffix>:ftjob-<id>.")
    finished_at: Optional[int] = None
    hyperparameters: ReportedHyperparameters
    model: str
    organization_id: str = "mftd"
    result_files: list[str] = Field(default_factory=list, description="Empty: download results from GET /v1/jobs/{id}/artifacts.")
    seed: int
    status: str = Field(description="validating_files never; queued, running, paused, succeeded, failed or cancelled.")
    trained_tokens: Optional[int] = None
    training_file: str
    validation_file: Optional[str] = None
    estimated_finish: Optional[int] = None
    integrations: Optional[list[dict[str, Any]]] = None
    metadata: dict[str, str] = Field(description="mftd_status (mftd's own status), mftd_reason, mftd_step, mftd_artifacts.")
    method: ReportedMethod


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str = Field(description="ftevent-<mftd event id>.")
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: Optional[Any] = None
    type: Literal["message", "metrics"] = "message"


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: Optional[float] = None
    train_loss: Optional[float] = None
    valid_loss: Optional[float] = None


class FineTuningJobCheckpoint(BaseModel):
    id: str = Field(description="ftckpt-<mftd checkpoint id>.")
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: Optional[str] = None
    last_id: Optional[str] = None
