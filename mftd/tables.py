"""The SQLite tables (SQLModel): models, datasets, jobs, events, metrics, checkpoints.

Every datetime column is ``sa_type=DateTime`` (naive UTC, see ``mftd.timeutil``): newer SQLModel
versions otherwise map ``datetime`` to a type that rejects naive values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel

from mftd.status import JobStatus
from mftd.timeutil import utcnow


class Model(SQLModel, table=True):
    """A base model: a local Hugging Face folder (possibly converted once from GGUF)."""

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    path: str = Field(description="Absolute path of the Hugging Face folder.")
    source_path: Optional[str] = Field(default=None, description="The GGUF file it was imported from, if any.")
    architecture: str
    model_type: str
    num_parameters: int
    dtype: str
    context_length: int
    has_chat_template: bool
    status: str = Field(default="ready", description="ready, or importing / failed for a model converted from GGUF.")
    progress: Optional[float] = Field(default=None, description="How far a GGUF import is, 0..1.")
    status_message: Optional[str] = Field(default=None, description="What an import is doing, or why it failed.")
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime)


class Dataset(SQLModel, table=True):
    """A JSONL dataset, validated at registration."""

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    path: str = Field(description="Absolute path of the JSONL file.")
    format: str = Field(description="text, prompt_completion or messages.")
    num_examples: int
    size_bytes: int
    longest_example_chars: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime)


class Job(SQLModel, table=True):
    """A fine-tuning job. ``status`` is written only by ``mftd.status.set_status``."""

    id: Optional[int] = Field(default=None, primary_key=True)
    name: Optional[str] = None
    model_id: int = Field(foreign_key="model.id", index=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    status: JobStatus = Field(default=JobStatus.QUEUED, index=True)
    status_reason: Optional[str] = Field(default=None, description="Why the job is in its status (waiting reasons, error).")
    priority: int = Field(default=0, description="Higher runs first; ties go to the oldest job.")
    config_json: str = Field(description="The job's JobConfig as JSON.")
    step: int = Field(default=0, description="Completed optimizer steps.")
    total_steps: Optional[int] = None
    loss: Optional[float] = None
    worker_pid: Optional[int] = None
    heartbeat_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    stop_request: Optional[str] = Field(default=None, description="pause, cancel or device: why the worker was asked to stop.")
    interruptions: int = Field(default=0, description="Worker deaths since the last progress.")
    interrupted_at_step: Optional[int] = None
    not_before: Optional[datetime] = Field(default=None, description="Do not restart before this time (backoff after an interruption).", sa_type=DateTime)
    tokens_seen: int = Field(default=0, description="Tokens trained on so far (as of the last completed step).")
    energy_mwh: float = Field(default=0.0, description="Energy drawn from the battery while the job trained, where current and voltage could be read.")
    energy_seconds: float = Field(default=0.0, description="Seconds of training over which energy was measured (on battery, with power readings).")
    energy_tokens: int = Field(default=0, description="Tokens trained during energy_seconds.")
    battery_percent_used: float = Field(default=0.0, description="Battery percentage points the level dropped while the job trained.")
    memory_plan_json: Optional[str] = Field(
        default=None, description="The memory plan as JSON: chosen micro-batch, accumulation, checkpointing, sharding, estimate by part, budget, measured peak."
    )
    micro_batch_cap: Optional[int] = Field(
        default=None, description="Largest micro-batch the planner may choose; lowered by the daemon after the worker was killed for memory."
    )
    created_at: datetime = Field(default_factory=utcnow, index=True, sa_type=DateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime)
    started_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    finished_at: Optional[datetime] = Field(default=None, sa_type=DateTime)


class Event(SQLModel, table=True):
    """Something that happened to a job, for people: status moves, checkpoints, warnings, errors."""

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime)
    level: str = "info"
    kind: str = "log"
    message: str
    data_json: Optional[str] = None


class Metric(SQLModel, table=True):
    """One logged optimizer step (``split`` train) or evaluation (``split`` eval)."""

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    step: int
    split: str = "train"
    loss: Optional[float] = None
    learning_rate: Optional[float] = None
    grad_norm: Optional[float] = None
    tokens: Optional[int] = Field(default=None, description="Tokens in this step.")
    tokens_per_second: Optional[float] = None
    rss_mb: Optional[float] = None
    perplexity: Optional[float] = Field(default=None, description="exp(loss), for eval rows.")
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime)


class Checkpoint(SQLModel, table=True):
    """A complete checkpoint folder on disk."""

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    step: int
    path: str
    size_bytes: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime)
