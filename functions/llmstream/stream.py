"""Stream function: the chunk log as Server-Sent Events (FastAPI + sse-starlette).

Runs under uvicorn behind the Lambda Web Adapter with a RESPONSE_STREAM function URL;
locally under plain uvicorn. Each event carries ``id: <seq>``; a reconnect with
``Last-Event-ID: n`` (or ``?after=n``) resumes after n with nothing lost or repeated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from llmstream import observe, v1, web
from llmstream.admission import admit
from llmstream.auth import Principal
from llmstream.exceptions import BadRequest, TaskNotFound, TokenMissing
from llmstream.models import ID_PATTERN, ChatRequest, ErrorBody, Health
from llmstream.settings import choose_model, get_settings
from llmstream.streaming import live_events, ping, take_lease
from llmstream.tasks import Task
from llmstream.tokens import StreamTokenVerifier
from llmstream.web import BearerCredentials, CurrentUser, DepsDep

if TYPE_CHECKING:
    from openai import AsyncOpenAI

observe.setup("stream")
settings = get_settings()
logger = observe.logger
_cold = [True]  # the first request of this environment is its cold start

app = FastAPI(
    title="llmstream stream",
    version="0.1.0",
    description="Server-Sent Events of a task's answer: resumable, several viewers per task.",
    # The function URL is public: it describes nothing (the tests build the schema in-process).
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
web.configure(app, settings, expose_headers=["X-Session-ID"])
v1.install(app)  # the OpenAI-compatible routes (v1/)


def _resume_point(last_event_id: str | None, after: int | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit():
            raise HTTPException(400, "Last-Event-ID must be a non-negative integer seq")
        return int(last_event_id)
    return after or 0


@dataclass(frozen=True)
class Viewer:
    """Who opened a stream, and the task they may follow."""

    user: Principal
    task: Task


async def stream_viewer(
    task_id: Annotated[str, Path(pattern=ID_PATTERN)],
    deps: DepsDep,
    credentials: BearerCredentials,
    token: Annotated[str | None, Query(description="Signed token from stream_url")] = None,
) -> Viewer:
    """The caller and the task they may follow: by the stream_url's token (EventSource
    cannot send headers), or else by a Bearer token. Another user's task, and a token that
    does not open this task, are answered as a task that does not exist (404)."""
    if token:
        # The token carries no user: the row first (404 if there is none), then the token
        # checked against its task and owner.
        task = await anyio.to_thread.run_sync(deps.tasks.get, task_id)
        if task.deleted:
            raise TaskNotFound(task_id)
        # The key comes from Secrets Manager on first use (a blocking call): off the loop.
        key = await anyio.to_thread.run_sync(lambda: deps.token_key)
        user = StreamTokenVerifier(key, task.task_id, task.owner).verify(token)
        return Viewer(user, task)
    if credentials is None:
        raise TokenMissing("sign in: pass ?token= from the stream_url, or a Bearer token")
    # A Bearer token: who is asking comes first (401), then what (404).
    user = await web.authenticate(credentials)
    task = await anyio.to_thread.run_sync(deps.tasks.owned_by(user.sub).get, task_id)
    return Viewer(user, task)


StreamViewer = Annotated[Viewer, Depends(stream_viewer)]


@app.get(
    "/stream/{task_id}",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "SSE of the answer"},
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        404: {"model": ErrorBody},
        429: {"model": ErrorBody},
    },
)
async def stream(
    viewer: StreamViewer,
    deps: DepsDep,
    after: Annotated[int | None, Query(ge=0, description="Resume after this seq")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Follow one of your tasks' answer: chunk events, then one terminal event
    (done/error/cancelled). Opened with the stream_url's token (EventSource cannot send
    headers), or with your Bearer token. A user has at most USER_MAX_STREAMS streams
    open at once (429 with Retry-After beyond that)."""
    start = _resume_point(last_event_id, after)
    task = viewer.task
    task_id = task.task_id
    # This response's log lines carry the answer's trace (the api's), not the request's.
    observe.correlate(task_id=task_id, user=task.owner, trace_id=task.trace_id)
    metrics = observe.Record("stream", backend=settings.chunklog_backend)
    held = await take_lease(deps, task.owner, metrics)
    metrics.count("StreamsOpened")
    if start > 0:
        metrics.count("StreamResumes")  # a reconnect that picks up after Last-Event-ID
    metrics.property(task_id=task_id, trace_id=task.trace_id)
    cold, _cold[0] = _cold[0], False
    logger.info("stream opened", extra={"after": start, "cold_start": cold})

    return EventSourceResponse(
        live_events(deps, task, start, metrics, held),
        ping=settings.stream_ping_seconds,
        ping_message_factory=ping,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # The events' own ending gives the lease back; this, for a response whose events
        # never started (HEAD, or a client gone before the first one).
        background=BackgroundTask(held.release),
    )


@lru_cache(maxsize=1)
def _async_model() -> AsyncOpenAI:
    # The openai SDK only for direct mode: a stream of the chunk log never calls the model,
    # and importing the SDK is a third of this function's cold start.
    from llmstream.llm import make_async_client

    return make_async_client(settings)


@app.post(
    "/direct",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The answer, as it comes"},
        401: {"model": ErrorBody},
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
        429: {"model": ErrorBody},
    },
)
async def direct(body: ChatRequest, user: CurrentUser, deps: DepsDep) -> StreamingResponse:
    """Direct mode: stream an answer straight from the model as text/plain, without the
    queue (the older RabbitMQ service's mode). The session id comes back in X-Session-ID.
    Nothing is recorded: no resume, no status; a disconnect stops the model call."""
    if not settings.direct_mode_enabled:
        raise HTTPException(404, "direct mode is disabled (template parameter EnableDirectMode)")
    # ModelNotAllowed (422) before any quota; then a slot of the caller's open streams, so
    # that a refusal for too many (429) spends nothing of the request quota; then the
    # request quota (429), as POST /chat.
    choose_model(settings, body.model)
    if body.task_fields():
        raise BadRequest("direct mode streams text: send tools and their results to POST /chat")
    held = await take_lease(deps, user.sub, observe.Record("stream", mode="direct"))
    try:
        # The key secret (read once) before admission: a key that fails reserves nothing.
        client = await anyio.to_thread.run_sync(_async_model)
        task = await anyio.to_thread.run_sync(
            partial(admit, deps, settings, user, body, status="running")
        )
    except BaseException:
        await held.release()
        raise
    from openai import OpenAIError

    from llmstream.llm import direct_pieces

    started, said, settled = False, 0, False  # the text (the model is asked when it starts)

    async def settle() -> None:
        # Once, when the text ends or after a response whose text never started (the
        # client gone first). Direct mode has no usage from the model: the estimate (4
        # chars a token) of what was sent and said, or nothing if it was never asked.
        nonlocal settled
        if settled:
            return
        settled = True
        spent = (len(body.message) + len(body.system or "") + said) // 4 if started else 0
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                deps.quotas.settle, user.sub, task.reserved, spent, task.created_at
            )

    async def text() -> AsyncIterator[str]:
        nonlocal started, said
        started = True
        try:
            async for piece in direct_pieces(client, task):
                await held.tick()
                said += len(piece)
                yield piece
        except OpenAIError as e:
            yield f"\n[error: model error: {e}]"
        finally:
            await held.release()
            await settle()

    async def closed() -> None:  # after the response, also if the text never started
        try:
            await held.release()
        finally:
            await settle()

    return StreamingResponse(
        text(),
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Session-ID": task.session_id,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
        background=BackgroundTask(closed),
    )


@app.get("/health", response_model=Health)
def health() -> Health:
    return Health(service="stream")
