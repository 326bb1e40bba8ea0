"""Errors on /v1 in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, with
the status codes the OpenAI SDKs map to their exception classes (400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 429
RateLimitError, 5xx InternalServerError).

The rest of the stream function keeps FastAPI's ``{"detail": ...}``: only paths under /v1/
are answered here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmstream import web
from llmstream.exceptions import (
    BadRequest,
    InputTooLarge,
    LlmStreamError,
    ModelNotAllowed,
    QuotaExceeded,
    TaskNotFound,
    TooManyStreams,
)

PREFIX = "/v1/"

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
}
# A 429 whose wait is longer than this is a spent day, not a busy minute: the SDKs would
# retry it in vain (they wait at most 60 s for a Retry-After), so they are told not to.
_RETRY_WORTH_SECONDS = 60


def body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _domain(status: int, exc: LlmStreamError, headers: dict[str, str]) -> JSONResponse:
    """A domain error on /v1 (web.py's status and headers), in OpenAI's shape."""
    param = code = None
    if isinstance(exc, BadRequest):
        status, param, code = exc.status, exc.param, exc.code
    elif isinstance(exc, ModelNotAllowed):
        status, param, code = 404, "model", "model_not_found"  # as OpenAI answers it
    elif isinstance(exc, InputTooLarge):
        status, param = 400, "input"
    elif isinstance(exc, TaskNotFound):
        message = f"No response found with id '{exc.task_id}'."
        return JSONResponse(body(message, 404), status_code=404, headers=headers)
    elif isinstance(exc, TooManyStreams):
        code = "too_many_streams"
    elif isinstance(exc, QuotaExceeded):
        code = "insufficient_quota" if exc.retry_after > _RETRY_WORTH_SECONDS else "rate_limit"
        if exc.retry_after > _RETRY_WORTH_SECONDS:
            headers["x-should-retry"] = "false"
    return JSONResponse(body(str(exc), status, param, code), status_code=status, headers=headers)


async def _validation(request: Request, exc: Exception) -> Response:
    if not request.url.path.startswith(PREFIX) or not isinstance(exc, RequestValidationError):
        return await request_validation_exception_handler(request, exc)  # type: ignore[arg-type]
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(where) or None
    if first.get("type") == "extra_forbidden":
        message = f"Unsupported parameter: '{param}' is not supported by this server."
        return JSONResponse(body(message, 400, param, "unsupported_parameter"), status_code=400)
    reason = str(first.get("msg", "invalid request"))
    message = f"Invalid value for '{param}': {reason}." if param else f"{reason}."
    return JSONResponse(body(message, 400, param, "invalid_value"), status_code=400)


async def _http(request: Request, exc: Exception) -> Response:
    if not request.url.path.startswith(PREFIX) or not isinstance(exc, StarletteHTTPException):
        return await http_exception_handler(request, exc)  # type: ignore[arg-type]
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"Unknown route: {request.method} {request.url.path}"
    return JSONResponse(
        body(message, exc.status_code), status_code=exc.status_code, headers=exc.headers
    )


def install(app: FastAPI) -> None:
    web.ERROR_SHAPES[PREFIX] = _domain
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
