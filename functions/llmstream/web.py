"""What the two FastAPI apps share: CORS, and domain errors mapped to HTTP in one place."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from llmstream.exceptions import (
    IdempotencyConflict,
    LlmStreamError,
    ModelUnavailable,
    QueueUnavailable,
    SessionNotFound,
    StoreUnavailable,
    TaskNotFound,
    TokenInvalid,
    TokenMissing,
)
from llmstream.settings import Settings

_STATUS: dict[type[LlmStreamError], int] = {
    TaskNotFound: 404,
    SessionNotFound: 404,
    TokenMissing: 401,
    TokenInvalid: 403,
    QueueUnavailable: 503,
    ModelUnavailable: 502,
    StoreUnavailable: 503,
}


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    if isinstance(exc, IdempotencyConflict):
        status = exc.status
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def configure(app: FastAPI, settings: Settings, *, expose_headers: list[str] | None = None) -> None:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["content-type", "idempotency-key", "authorization", "last-event-id"],
        expose_headers=expose_headers or [],
    )
    app.add_exception_handler(LlmStreamError, _domain_error)
