"""The one place where ``mftd.errors`` become HTTP answers."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from mftd.errors import (
    ConflictError,
    DatasetValidationError,
    InvalidTransitionError,
    InvalidValueError,
    MftdError,
    ModelValidationError,
    NotFoundError,
)

STATUS_BY_ERROR: tuple[tuple[type[MftdError], int], ...] = (
    (NotFoundError, status.HTTP_404_NOT_FOUND),
    (InvalidTransitionError, status.HTTP_409_CONFLICT),
    (ConflictError, status.HTTP_409_CONFLICT),
    (ModelValidationError, 422),
    (DatasetValidationError, 422),
    (InvalidValueError, 422),
)
"""Each daemon-core error's status code; the first class that matches wins, any other MftdError is 400."""


def status_for(error: MftdError) -> int:
    """The HTTP status code for a daemon-core error (shared with the OpenAI-compatible routes)."""
    for error_class, code in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return code
    return status.HTTP_400_BAD_REQUEST


def _with_detail(_request: Request, error: MftdError) -> JSONResponse:
    return JSONResponse(status_code=status_for(error), content={"detail": str(error)})


def _invalid_transition(_request: Request, error: InvalidTransitionError) -> JSONResponse:
    return JSONResponse(
        status_code=status_for(error),
        content={"detail": str(error), "current": error.current, "requested": error.requested, "allowed": error.allowed},
    )


def _model_invalid(_request: Request, error: ModelValidationError) -> JSONResponse:
    return JSONResponse(status_code=status_for(error), content={"detail": str(error), "problems": []})


def _dataset_invalid(_request: Request, error: DatasetValidationError) -> JSONResponse:
    problems = [{"line": line, "error": message} for line, message in error.problems]
    return JSONResponse(status_code=status_for(error), content={"detail": str(error), "problems": problems})


def _invalid_value(_request: Request, error: InvalidValueError) -> JSONResponse:
    # Shaped like FastAPI's own 422, so clients read every field error the same way.
    detail = [{"loc": [error.location, error.field], "msg": str(error), "type": "value_error"}]
    return JSONResponse(status_code=status_for(error), content={"detail": detail})


def install_error_handlers(app: FastAPI) -> None:
    """Map each daemon-core error to its status code (the most specific class wins)."""
    app.add_exception_handler(InvalidTransitionError, _invalid_transition)
    app.add_exception_handler(ModelValidationError, _model_invalid)
    app.add_exception_handler(DatasetValidationError, _dataset_invalid)
    app.add_exception_handler(InvalidValueError, _invalid_value)
    app.add_exception_handler(MftdError, _with_detail)  # NotFoundError, ConflictError and the rest: status_for decides
