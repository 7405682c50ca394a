"""Every error the worker raises on purpose. Messages say what was found, what was expected, and how to fix it.

``JobSetupError`` and its subclasses mean the job cannot run as configured (retrying will not help):
the worker exits with ``protocol.EXIT_BAD_CONFIG`` for them and ``protocol.EXIT_FAILED`` for anything else.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of all errors the worker raises on purpose."""


class JobSetupError(WorkerError):
    """The job cannot run as configured: bad config, unusable model or dataset. Exit code 78."""


class JobNotFoundError(JobSetupError):
    """The job id, or the model or dataset it points to, is not in the database."""


class JobConfigError(JobSetupError):
    """The job's config_json does not parse, or does not fit the model."""


class ModelNotUsableError(JobSetupError):
    """The model folder is missing or cannot be loaded as a causal language model."""


class DatasetNotUsableError(JobSetupError):
    """The dataset file is missing, has bad lines, or has nothing to train on.

    ``problems`` lists each bad line as (line number, what is wrong), so all of them are reported at once.
    """

    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None):
        self.problems = problems or []
        super().__init__(message)


class UnsupportedArchitectureError(JobSetupError):
    """A GGUF file whose architecture the importer does not convert."""


class CorruptCheckpointError(WorkerError):
    """A checkpoint folder without a manifest, with a missing file, or with a checksum that does not match."""
