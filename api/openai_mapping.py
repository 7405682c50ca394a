"""How mftd's datasets, jobs, events and checkpoints look through the OpenAI fine-tuning API, and back.

Statuses (OpenAI has no waiting or interrupted; ``metadata.mftd_status`` always carries mftd's own):

    queued -> queued        running -> running        paused -> paused (what OpenAI's pause gives)
    waiting -> queued       (the device stopped it; it starts again by itself; the reason is in metadata.mftd_reason)
    interrupted -> queued   (the worker died; it restarts from its last checkpoint by itself)
    succeeded, failed, cancelled -> the same

Hyperparameters:

    n_epochs                 -> epochs (auto: 1)
    batch_size N             -> batch_size 1, grad_accum_steps N: N examples per optimizer step, one at a time,
                                so memory stays that of one example (auto: mftd's 1 x 4)
    learning_rate_multiplier -> learning_rate = 2e-4 x multiplier (auto: 2e-4)

Anything else mftd knows goes in the ``mftd`` extension object of the request.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Optional

from pydantic import ValidationError

from api.openai_schemas import (
    CheckpointMetrics,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Hyperparameters,
    JobError,
    OpenAIFile,
    ReportedHyperparameters,
    ReportedMethod,
    ReportedSupervisedMethod,
)
from mftd.errors import InvalidValueError, NotFoundError
from mftd.jobconfig import JobConfig
from mftd.registry import MAX_ID
from mftd.status import JobStatus
from mftd.tables import Checkpoint, Dataset, Event, Job, Metric, Model

BASE_LEARNING_RATE = 2e-4
METADATA_VALUE_CHARS = 512

FILE_PREFIX = "file"
JOB_PREFIX = "ftjob"
EVENT_PREFIX = "ftevent"
CHECKPOINT_PREFIX = "ftckpt"

OPENAI_STATUS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.WAITING: "queued",
    JobStatus.INTERRUPTED: "queued",
    JobStatus.PAUSED: "paused",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}

EVENT_LEVEL = {"info": "info", "warning": "warn", "error": "error"}
EXTENSION_FIELDS = frozenset(JobConfig.model_fields) | {"priority"}


def unix_seconds(moment: Optional[datetime]) -> Optional[int]:
    """A naive UTC datetime as Unix seconds."""
    if moment is None:
        return None
    return int(moment.replace(tzinfo=timezone.utc).timestamp())


def object_id(prefix: str, row_id: int) -> str:
    return f"{prefix}-{row_id}"


def parse_object_id(text: str, prefix: str, what: str) -> int:
    """The row id in ``<prefix>-<id>`` (a bare number works too).

    Raises:
        NotFoundError: ``text`` is not such an id.
    """
    match = re.fullmatch(rf"(?:{re.escape(prefix)}-)?(\d{{1,19}})", text.strip())
    if match is None or not 0 < int(match.group(1)) <= MAX_ID:
        raise NotFoundError(f"{what} {text!r} does not exist: {what} ids look like {prefix}-3.")
    return int(match.group(1))


def file_object(dataset: Dataset) -> OpenAIFile:
    return OpenAIFile(
        id=object_id(FILE_PREFIX, dataset.id),
        bytes=dataset.size_bytes,
        created_at=unix_seconds(dataset.created_at),
        filename=dataset.path.rsplit("/", 1)[-1],
    )


# ---- requests -------------------------------------------------------------------------------------


def _chosen_hyperparameters(request: FineTuningJobCreate) -> Hyperparameters:
    method = request.method
    if method is not None and method.type != "supervised":
        raise InvalidValueError("method", f"method type {method.type!r} is not supported by mftd; use 'supervised' (or leave method out).")
    if method is not None and method.supervised is not None and method.supervised.hyperparameters is not None:
        return method.supervised.hyperparameters
    return request.hyperparameters or Hyperparameters()


def _refuse_unsupported(request: FineTuningJobCreate) -> None:
    if request.validation_file:
        raise InvalidValueError("validation_file", "validation_file is not supported by mftd yet; leave it out.")
    if request.integrations:
        raise InvalidValueError("integrations", "integrations (such as wandb) are not supported by mftd; leave them out.")
    if request.metadata:
        raise InvalidValueError("metadata", "mftd does not store metadata; leave it out (suffix names the job).")


def job_config_fields(request: FineTuningJobCreate) -> tuple[dict[str, Any], int]:
    """The mftd job config fields and the priority a create request asks for.

    Raises:
        InvalidValueError: an unsupported option, an unknown ``mftd`` field, or a field out of range.
    """
    _refuse_unsupported(request)
    hyperparameters = _chosen_hyperparameters(request)
    fields: dict[str, Any] = {}
    if hyperparameters.n_epochs != "auto":
        fields["epochs"] = hyperparameters.n_epochs
    if hyperparameters.batch_size != "auto":
        fields["batch_size"] = 1
        fields["grad_accum_steps"] = hyperparameters.batch_size
    if hyperparameters.learning_rate_multiplier != "auto":
        fields["learning_rate"] = BASE_LEARNING_RATE * hyperparameters.learning_rate_multiplier
    if request.seed is not None:
        fields["seed"] = request.seed
    extension = dict(request.mftd or {})
    unknown = sorted(set(extension) - EXTENSION_FIELDS)
    if unknown:
        raise InvalidValueError(
            "mftd", f"unknown mftd field(s): {', '.join(unknown)}. Known: {', '.join(sorted(EXTENSION_FIELDS))}."
        )
    priority = extension.pop("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -1000 <= priority <= 1000:
        raise InvalidValueError("mftd", f"mftd.priority must be a whole number from -1000 to 1000, not {priority!r}.")
    fields.update(extension)
    try:
        JobConfig.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc'])) or 'config'}: {item['msg']}" for item in error.errors())
        raise InvalidValueError("hyperparameters", f"the job config is not valid: {problems}.") from error
    return fields, priority


# ---- responses ------------------------------------------------------------------------------------


def _reported_hyperparameters(config: JobConfig) -> ReportedHyperparameters:
    epochs = config.epochs
    return ReportedHyperparameters(
        n_epochs=int(epochs) if float(epochs).is_integer() else epochs,
        batch_size=config.batch_size * config.grad_accum_steps,
        learning_rate_multiplier=round(config.learning_rate / BASE_LEARNING_RATE, 6),
    )


def fine_tuned_model_name(job: Job, model: Optional[Model]) -> str:
    model_name = model.name if model is not None else f"model-{job.model_id}"
    return f"ft:{model_name}:mftd:{job.name or ''}:{object_id(JOB_PREFIX, job.id)}"


def _metadata(job: Job) -> dict[str, str]:
    metadata = {"mftd_status": JobStatus(job.status).value, "mftd_step": f"{job.step}/{job.total_steps or '?'}"}
    if job.status_reason:
        metadata["mftd_reason"] = job.status_reason[:METADATA_VALUE_CHARS]
    metadata["mftd_artifacts"] = f"/v1/jobs/{job.id}/artifacts"
    return metadata


def estimated_finish(job: Job, recent_train_metrics: list[Metric], now: datetime) -> Optional[int]:
    """When a running job should finish, from the pace of its recent steps; None if unknown."""
    if JobStatus(job.status) != JobStatus.RUNNING or not job.total_steps or len(recent_train_metrics) < 2:
        return None
    first, last = recent_train_metrics[0], recent_train_metrics[-1]
    seconds = (last.created_at - first.created_at).total_seconds()
    steps = last.step - first.step
    if seconds <= 0 or steps <= 0:
        return None
    remaining = max(0, job.total_steps - job.step) * seconds / steps
    return unix_seconds(now) + round(remaining)


def fine_tuning_job(
    job: Job, model: Optional[Model], trained_tokens: Optional[int], finish: Optional[int]
) -> FineTuningJob:
    status = JobStatus(job.status)
    config = JobConfig.model_validate_json(job.config_json)
    hyperparameters = _reported_hyperparameters(config)
    error = None
    if status == JobStatus.FAILED:
        error = JobError(code="training_failed", message=job.status_reason or "the job failed; see its events")
    return FineTuningJob(
        id=object_id(JOB_PREFIX, job.id),
        created_at=unix_seconds(job.created_at),
        error=error,
        fine_tuned_model=fine_tuned_model_name(job, model) if status == JobStatus.SUCCEEDED else None,
        finished_at=unix_seconds(job.finished_at),
        hyperparameters=hyperparameters,
        model=model.name if model is not None else str(job.model_id),
        seed=config.seed,
        status=OPENAI_STATUS[status],
        trained_tokens=trained_tokens if status.is_final else None,
        training_file=object_id(FILE_PREFIX, job.dataset_id),
        estimated_finish=finish,
        metadata=_metadata(job),
        method=ReportedMethod(supervised=ReportedSupervisedMethod(hyperparameters=hyperparameters)),
    )


def job_event(event: Event, data: Any) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=object_id(EVENT_PREFIX, event.id),
        created_at=unix_seconds(event.created_at),
        level=EVENT_LEVEL.get(event.level, "info"),
        message=event.message,
        data=data,
    )


def job_checkpoint(
    checkpoint: Checkpoint, job: Job, model: Optional[Model], train_loss: Optional[float], valid_loss: Optional[float]
) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=object_id(CHECKPOINT_PREFIX, checkpoint.id),
        created_at=unix_seconds(checkpoint.created_at),
        fine_tuned_model_checkpoint=f"{fine_tuned_model_name(job, model)}:ckpt-step-{checkpoint.step}",
        fine_tuning_job_id=object_id(JOB_PREFIX, job.id),
        metrics=CheckpointMetrics(step=checkpoint.step, train_loss=train_loss, valid_loss=valid_loss),
        step_number=checkpoint.step,
    )
