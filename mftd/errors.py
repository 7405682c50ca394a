"""Every error the daemon core raises on purpose. Messages say what was found, what was expected, and how to fix it."""

from __future__ import annotations


class MftdError(Exception):
    """Base of all mftd errors."""


class NotFoundError(MftdError):
    """A model, dataset or job id that does not exist."""


class InvalidTransitionError(MftdError):
    """A job status change that the state machine does not allow."""

    def __init__(self, job_id: int, current: str, requested: str, allowed: list[str]):
        self.job_id = job_id
        self.current = current
        self.requested = requested
        self.allowed = allowed
        allowed_text = ", ".join(allowed) if allowed else "nothing (it is final)"
        super().__init__(
            f"job {job_id} is {current}; it cannot become {requested}. From {current} it can become: {allowed_text}."
        )


class StatusChangedError(InvalidTransitionError):
    """The job's status changed in the database between reading it and writing the new one."""

    def __init__(self, job_id: int, was: str, now: str, requested: str, allowed: list[str]):
        super().__init__(job_id, now, requested, allowed)
        self.args = (
            f"job {job_id} changed from {was} to {now} while this request was handled, so it was not made {requested}; "
            "look at the job again and retry if it still makes sense.",
        )


class ModelValidationError(MftdError):
    """A model folder or file that cannot be registered."""


class DatasetValidationError(MftdError):
    """A dataset file with bad lines; ``problems`` lists each as (line number, message)."""

    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None):
        self.problems = problems or []
        super().__init__(message)


class ConflictError(MftdError):
    """A request that clashes with the current state (a name already taken, a model still in use)."""


class RemoteHostRefusedError(MftdError):
    """Listening on a non-loopback address without ``--allow-remote``."""


class InvalidValueError(MftdError):
    """A well-formed request value that cannot be used here (max_seq_len above the model's context length, an unsafe name).

    ``field`` names the request field and ``location`` where it was sent (body, query or path), so
    the API can answer 422 the way it does for type errors.
    """

    def __init__(self, field: str, message: str, location: str = "body"):
        self.field = field
        self.location = location
        super().__init__(message)
