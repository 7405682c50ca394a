"""The daemon-core operations on models, datasets and jobs, shared by the HTTP API, the CLI and tests.

Every function takes a session (and the settings where files are involved) and raises
``mftd.errors``; none knows about HTTP. Callers use the package: ``registry.create_job(...)``.
"""

from mftd.registry.datasets import delete_dataset, get_dataset, list_datasets, register_dataset
from mftd.registry.jobs import (
    cancel_job,
    create_job,
    delete_job,
    get_job,
    job_config,
    list_jobs,
    pause_job,
    resume_job,
)
from mftd.registry.lookup import MAX_ID, NAME_PATTERN, Reference, check_name
from mftd.registry.models import delete_model, get_model, list_models, register_model
from mftd.registry.outputs import (
    Artifact,
    artifact_path,
    list_artifacts,
    list_checkpoints,
    list_events,
    list_metrics,
)

__all__ = [
    "MAX_ID",
    "NAME_PATTERN",
    "Artifact",
    "Reference",
    "artifact_path",
    "cancel_job",
    "check_name",
    "create_job",
    "delete_dataset",
    "delete_job",
    "delete_model",
    "get_dataset",
    "get_job",
    "get_model",
    "job_config",
    "list_artifacts",
    "list_checkpoints",
    "list_datasets",
    "list_events",
    "list_jobs",
    "list_metrics",
    "list_models",
    "pause_job",
    "register_dataset",
    "register_model",
    "resume_job",
]
