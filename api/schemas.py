"""Request and response models of the HTTP API, in families per resource (``JobCreate``, ``JobPublic``, ``JobsPublic``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictInt, StrictStr

from mftd.energy import mwh_per_1k_tokens
from mftd.jobconfig import JobConfig
from mftd.registry import MAX_ID, NAME_PATTERN, Artifact
from mftd.status import JobStatus
from mftd.tables import Event, Job
from mftd.timeutil import iso_z

IsoTime = Annotated[datetime, PlainSerializer(iso_z, return_type=str)]
"""A naive UTC datetime, sent as ISO 8601 with Z."""

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Reference = Union[Annotated[StrictInt, Field(ge=1, le=MAX_ID)], Annotated[StrictStr, Field(min_length=1, max_length=100)]]
"""A model or dataset by id (a JSON number) or by name (a string)."""

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="1-100 letters, digits, '.', '_' or '-'.")]


class Message(BaseModel):
    message: str


class HealthPublic(BaseModel):
    status: str = Field(description="ok while the daemon answers.")
    version: str


class LoginCodePublic(BaseModel):
    code: str = Field(description="Trade it once for the token at POST /v1/auth/exchange; it expires soon.")
    expires_in: int = Field(description="Seconds until the code expires.")
    url: str = Field(description="The dashboard URL that logs in with the code (the code is in the #fragment, never sent in a request line).")


class TokenPublic(BaseModel):
    token: str = Field(description="The API token; send it as 'Authorization: Bearer <token>'.")


class ReadingPublic(BaseModel):
    name: str
    value: Any = Field(description="The reading, or null if unavailable.")
    unit: str
    source: str
    unavailable_reason: Optional[str] = None


class ConstraintCheckPublic(BaseModel):
    constraint: str = Field(description="The JobConstraints field, e.g. min_battery_percent.")
    holds: bool
    detail: str = Field(description="The check in words, with the reading and the limit.")
    if_unavailable: str = Field(description="What an unavailable reading means for this constraint.")


class JobDevicePublic(BaseModel):
    job_id: int
    status: Optional[str]
    allowed: bool = Field(description="Whether the job's own constraints (and hysteresis) let it train now.")
    reasons: list[str] = Field(description="Why not (empty when allowed).")
    constraints: list[ConstraintCheckPublic]
    conditions_held_since: Optional[str] = Field(description="For a waiting job: since when the resume conditions have held (the settle period counts from here).")
    duty_cycle: float = Field(description="Share of the time the job may train (below 1 above the soft temperature limit).")


class ThrottlePublic(BaseModel):
    duty_cycle: float
    reason: str


class DevicePublic(BaseModel):
    can_train: bool = Field(description="Whether the daemon-wide default constraints allow training now.")
    reasons: list[str] = Field(description="Why training may not run now (empty when it may).")
    readings: list[ReadingPublic]
    constraints: list[ConstraintCheckPublic] = Field(default_factory=list, description="The default constraints, each checked.")
    jobs: list[JobDevicePublic] = Field(default_factory=list, description="Every job that could train, with its own verdict.")
    throttle: Optional[ThrottlePublic] = Field(None, description="The soft thermal limit's slowdown of the running job.")
    measured_at: Optional[str] = None


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    path: str = Field(min_length=1, description="Absolute path of a local Hugging Face model folder (or of a .gguf file to import).")


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    path: str
    source_path: Optional[str] = None
    architecture: str
    model_type: str
    num_parameters: int
    dtype: str
    context_length: int
    has_chat_template: bool
    status: str = Field("ready", description="ready; importing or failed for a GGUF import.")
    progress: Optional[float] = Field(None, description="How far a GGUF import is, 0..1.")
    status_message: Optional[str] = Field(None, description="What an import is doing, or why it failed.")
    created_at: IsoTime


class ModelImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    path: str = Field(min_length=1, description="Absolute path of a .gguf file to convert once into a Hugging Face folder.")


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    path: str
    format: str = Field(description="text, prompt_completion or messages.")
    num_examples: int
    size_bytes: int
    longest_example_chars: int
    created_at: IsoTime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class JobCreate(JobConfig):
    """A new job: which model and dataset (by id or name), plus every JobConfig field, flat."""

    model: Reference = Field(description="The model's id or name.")
    dataset: Reference = Field(description="The dataset's id or name.")
    name: Optional[str] = Field(None, max_length=200, description="A label for people.")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first; ties go to the oldest job.")

    def to_config(self) -> JobConfig:
        # exclude_unset keeps track of which fields the client gave (the registry fills in some defaults per model).
        return JobConfig.model_validate(self.model_dump(include=set(JobConfig.model_fields), exclude_unset=True))


class JobPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    name: Optional[str]
    model_id: int
    dataset_id: int
    status: JobStatus
    status_reason: Optional[str]
    stop_request: Optional[str] = Field(description="pause, cancel or device while a running worker is being stopped.")
    priority: int
    step: int = Field(description="Completed optimizer steps.")
    total_steps: Optional[int]
    progress: Optional[float] = Field(description="step / total_steps, once total_steps is known.")
    loss: Optional[float]
    interruptions: int
    config: JobConfig
    created_at: IsoTime
    updated_at: IsoTime
    started_at: Optional[IsoTime]
    finished_at: Optional[IsoTime]
    heartbeat_at: Optional[IsoTime]
    not_before: Optional[IsoTime]
    tokens_seen: int = Field(0, description="Tokens trained on so far.")
    energy_mwh: float = Field(0.0, description="Battery energy drawn while training, where current and voltage can be read (on battery only).")
    energy_seconds: float = Field(0.0, description="Training seconds over which energy_mwh was measured.")
    energy_mwh_per_1k_tokens: Optional[float] = Field(None, description="energy_mwh per 1,000 tokens trained while it was measured.")
    battery_percent_used: float = Field(0.0, description="Battery percentage points used while the job trained.")
    memory_plan: Optional[dict[str, Any]] = Field(
        None,
        description="How the run fits its memory budget: micro_batch x grad_accum_steps, gradient_checkpointing, base_dtype, parameter_sharding, "
        "the allocator setting (fast: a 16 MB mmap threshold, lean: 1 MB), estimate_mb (the expected peak RSS) with its parts, resident_mb "
        "(what must stay in memory: fits compares it with budget_mb; below estimate_mb by the mapped part, file pages a sharded run keeps "
        "while memory allows), budget_mb; planned at submit for max_seq_len, again by the worker for the real data, with peak_mb after the run.",
    )
    micro_batch_cap: Optional[int] = Field(None, description="Largest micro-batch allowed after the worker was killed for memory.")

    @classmethod
    def from_row(cls, job: Job) -> "JobPublic":
        progress = None
        if job.total_steps:
            progress = min(1.0, job.step / job.total_steps)
        if JobStatus(job.status) == JobStatus.SUCCEEDED:
            progress = 1.0
        return cls(
            **job.model_dump(exclude={"config_json", "memory_plan_json", "worker_pid", "interrupted_at_step"}),
            progress=progress,
            config=JobConfig.model_validate_json(job.config_json),
            memory_plan=json.loads(job.memory_plan_json) if job.memory_plan_json else None,
            energy_mwh_per_1k_tokens=mwh_per_1k_tokens(job.energy_mwh or 0.0, job.energy_tokens or 0),
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class EventPublic(BaseModel):
    id: int
    job_id: int
    created_at: IsoTime
    level: str = Field(description="info, warning or error.")
    kind: str = Field(description="status, created, stop_request, checkpoint, log, error, ...")
    message: str
    data: Optional[Any] = None

    @classmethod
    def from_row(cls, event: Event) -> "EventPublic":
        data = None
        if event.data_json:
            try:
                data = json.loads(event.data_json)
            except json.JSONDecodeError:
                data = event.data_json
        return cls(**event.model_dump(exclude={"data_json"}), data=data)


class MetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    step: int
    split: str
    loss: Optional[float]
    learning_rate: Optional[float]
    grad_norm: Optional[float]
    tokens: Optional[int]
    tokens_per_second: Optional[float]
    rss_mb: Optional[float]
    perplexity: Optional[float] = None
    created_at: IsoTime


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    step: int
    path: str
    size_bytes: int
    created_at: IsoTime


class ArtifactPublic(BaseModel):
    path: str = Field(description="Relative to the job's folder.")
    kind: str = Field(description="file, or folder (downloaded as a zip).")
    size_bytes: int
    url: str = Field(description="Download URL (a folder comes as a zip).")

    @classmethod
    def from_artifact(cls, job_id: int, artifact: Artifact) -> "ArtifactPublic":
        return cls(
            path=artifact.path,
            kind="folder" if artifact.is_folder else "file",
            size_bytes=artifact.size_bytes,
            url=f"/v1/jobs/{job_id}/artifacts/{artifact.path}",
        )
