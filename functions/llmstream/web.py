"""What the two FastAPI apps share: the caller and Deps as dependencies, CORS, and domain
errors mapped to HTTP in one place."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from llmstream import observe
from llmstream.auth import Principal, get_authenticator
from llmstream.deps import Deps, get_deps
from llmstream.exceptions import (
    ApiKeyNotFound,
    AuthUnavailable,
    BadRequest,
    Forbidden,
    IdempotencyConflict,
    InputTooLarge,
    LlmStreamError,
    ModelNotAllowed,
    ModelUnavailable,
    QueueUnavailable,
    QuotaExceeded,
    SessionNotFound,
    StoreUnavailable,
    TaskNotFound,
    TokenExpired,
    TokenMissing,
    TooManyApiKeys,
    TooManyStreams,
    Unauthenticated,
)
from llmstream.settings import Settings

# The bearer scheme in the OpenAPI docs ("Authorize" there takes a token); the check is ours,
# so a missing header is our 401 with a reason, not FastAPI's.
_bearer = HTTPBearer(auto_error=False, description="An access token of the user pool")


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def authenticate(credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller with this bearer (401 otherwise). The check runs in a worker thread, so a
    first fetch of the issuer's keys never blocks the event loop; the caller's sub then goes
    on every log line of the request (set here, in the request's own context)."""
    header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    user = await anyio.to_thread.run_sync(get_authenticator().authenticate, header)
    observe.correlate(user=user.sub)
    return user


async def current_user(credentials: BearerCredentials) -> Principal:
    """The signed-in caller (401 otherwise)."""
    return await authenticate(credentials)


def admin_user(user: Annotated[Principal, Depends(current_user)]) -> Principal:
    """A signed-in member of the operators' group (403 for anyone else)."""
    return get_authenticator().require_admin(user)


def signed_in_user(user: Annotated[Principal, Depends(current_user)]) -> Principal:
    """A caller signed in with a token of the user pool; a personal API key is 403. The api
    function's routes take sign-in tokens only, as API Gateway's JWT authorizer does in
    front of it in the cloud; and a key never creates, lists or revokes keys."""
    if user.via != "jwt":
        raise Forbidden(
            "API keys work on the stream URL only (/v1, /stream): sign in for this route"
        )
    return user


CurrentUser = Annotated[Principal, Depends(current_user)]
SignedInUser = Annotated[Principal, Depends(signed_in_user)]
AdminUser = Annotated[Principal, Depends(admin_user)]
DepsDep = Annotated[Deps, Depends(get_deps)]

_STATUS: dict[type[LlmStreamError], int] = {
    BadRequest: 400,
    TaskNotFound: 404,
    SessionNotFound: 404,
    ApiKeyNotFound: 404,
    TooManyApiKeys: 409,
    TokenMissing: 401,
    TokenExpired: 401,
    Unauthenticated: 401,
    Forbidden: 403,
    QuotaExceeded: 429,
    TooManyStreams: 429,  # a QuotaExceeded: its Retry-After below
    AuthUnavailable: 503,
    QueueUnavailable: 503,
    ModelUnavailable: 502,
    ModelNotAllowed: 422,
    InputTooLarge: 422,
    StoreUnavailable: 503,
}


# A path prefix's own error body (v1/errors.py: OpenAI's shape under /v1/), given the
# status and headers below; every other path answers {"detail": reason}.
ErrorShape = Callable[[int, LlmStreamError, dict[str, str]], JSONResponse]
ERROR_SHAPES: dict[str, ErrorShape] = {}


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    if isinstance(exc, IdempotencyConflict | BadRequest):
        status = exc.status
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(exc, QuotaExceeded):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    for prefix, shape in ERROR_SHAPES.items():
        if request.url.path.startswith(prefix) and isinstance(exc, LlmStreamError):
            return shape(status, exc, headers)
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


_TRACE_HEADER = observe.TRACE_HEADER.encode()


class Observed:
    """ASGI middleware: each request's log lines carry its trace id (observe.py), and no
    key of an earlier request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == _TRACE_HEADER), None
        )
        header = observe.trace_header(incoming)
        with observe.request_scope(trace_id=observe.trace_id(header)), observe.tracing(header):
            await self.app(scope, receive, send)


def configure(app: FastAPI, settings: Settings, *, expose_headers: list[str] | None = None) -> None:
    app.add_middleware(Observed)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=settings.cors_methods,
        allow_headers=settings.cors_headers,
        expose_headers=[*(expose_headers or []), "Retry-After"],
    )
    app.add_exception_handler(LlmStreamError, _domain_error)
