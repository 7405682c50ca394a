"""Errors of the OpenAI-compatible routes in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

The openai package reads ``error.message`` from that body. Where mftd's own API answers 422,
these routes answer 400, as OpenAI does for a bad request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Optional

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from api.errors import status_for
from mftd.errors import DatasetValidationError, InvalidValueError, MftdError

CODE_BY_STATUS = {401: "invalid_api_key", 404: "not_found", 409: "conflict"}


def openai_error(
    status_code: int, message: str, param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict[str, str]] = None
) -> JSONResponse:
    error_type = "invalid_request_error" if status_code < 500 else "server_error"
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code or CODE_BY_STATUS.get(status_code)}}
    return JSONResponse(status_code=status_code, content=body, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> tuple[str, Optional[str]]:
    parts, param = [], None
    for item in errors:
        location = [str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path", "form")]
        param = param or (location[0] if location else None)
        parts.append(f"{'.'.join(location) or 'request'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid", param


def _from_mftd_error(error: MftdError) -> JSONResponse:
    status_code = status_for(error)
    if status_code == 422:
        status_code = 400
    if isinstance(error, DatasetValidationError):
        lines = "; ".join(f"line {line}: {message}" if line else message for line, message in error.problems[:5])
        return openai_error(status_code, f"the file is not valid fine-tuning JSONL: {lines or error}", "file", "invalid_file")
    param = error.field if isinstance(error, InvalidValueError) else None
    return openai_error(status_code, str(error), param)


class OpenAIRoute(APIRoute):
    """A route whose errors (auth, validation, mftd's own) come out in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as error:
                message, param = _describe_validation(list(error.errors()))
                return openai_error(400, message, param)
            except HTTPException as error:
                return openai_error(error.status_code, str(error.detail), headers=error.headers)
            except MftdError as error:
                return _from_mftd_error(error)

        return handle
