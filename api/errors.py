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


def _not_found(_request: Request, error: NotFoundError) -> JSONResponse:
    return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": str(error)})


def _invalid_transition(_request: Request, error: InvalidTransitionError) -> JSONResponse:
    return JSONResponse(
        status_code=status.HTTP_409_CONFLICT,
        content={"detail": str(error), "current": error.current, "requested": error.requested, "allowed": error.allowed},
    )


def _conflict(_request: Request, error: ConflictError) -> JSONResponse:
    return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(error)})


def _model_invalid(_request: Request, error: ModelValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": str(error), "problems": []})


def _dataset_invalid(_request: Request, error: DatasetValidationError) -> JSONResponse:
    problems = [{"line": line, "error": message} for line, message in error.problems]
    return JSONResponse(status_code=422, content={"detail": str(error), "problems": problems})


def _invalid_value(_request: Request, error: InvalidValueError) -> JSONResponse:
    # Shaped like FastAPI's own 422, so clients read every field error the same way.
    detail = [{"loc": [error.location, error.field], "msg": str(error), "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})


def _other_mftd_error(_request: Request, error: MftdError) -> JSONResponse:
    return JSONResponse(status_code=status.HTTP_400_BAD_REQUEST, content={"detail": str(error)})


def install_error_handlers(app: FastAPI) -> None:
    """Map each daemon-core error to its status code (the most specific class wins)."""
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(InvalidTransitionError, _invalid_transition)
    app.add_exception_handler(ConflictError, _conflict)
    app.add_exception_handler(ModelValidationError, _model_invalid)
    app.add_exception_handler(DatasetValidationError, _dataset_invalid)
    app.add_exception_handler(InvalidValueError, _invalid_value)
    app.add_exception_handler(MftdError, _other_mftd_error)
