"""Stream function: the chunk log as Server-Sent Events (FastAPI + sse-starlette).

Runs under uvicorn behind the Lambda Web Adapter with a RESPONSE_STREAM function URL;
locally under plain uvicorn. Each event carries ``id: <seq>``; a reconnect with
``Last-Event-ID: n`` (or ``?after=n``) resumes after n with nothing lost or repeated.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

import anyio
from fastapi import FastAPI, Header, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI, OpenAIError
from sse_starlette import EventSourceResponse, ServerSentEvent

from llmstream import tokens, web
from llmstream.deps import get_deps
from llmstream.exceptions import StoreUnavailable
from llmstream.follow import Pacer, follow
from llmstream.llm import direct_pieces, make_async_client
from llmstream.models import ID_PATTERN, ChatRequest, ErrorBody, Health
from llmstream.settings import get_settings
from llmstream.tasks import Task

settings = get_settings()
logger = logging.getLogger(__name__)

app = FastAPI(
    title="llmstream stream",
    version="0.1.0",
    description="Server-Sent Events of a task's answer: resumable, several viewers per task.",
)
web.configure(app, settings, expose_headers=["X-Session-ID"])


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping")


def _resume_point(last_event_id: str | None, after: int | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit():
            raise HTTPException(400, "Last-Event-ID must be a non-negative integer seq")
        return int(last_event_id)
    return after or 0


@app.get(
    "/stream/{task_id}",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "SSE of the answer"},
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
    },
)
async def stream(
    task_id: Annotated[str, Path(pattern=ID_PATTERN)],
    token: Annotated[str | None, Query(description="Signed token from stream_url")] = None,
    after: Annotated[int | None, Query(ge=0, description="Resume after this seq")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Follow a task's answer: chunk events, then one terminal event (done/error/cancelled)."""
    if token is None and authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    deps = get_deps()
    # The key comes from Secrets Manager on first use (a blocking call): off the event loop.
    key = await anyio.to_thread.run_sync(lambda: deps.token_key)
    tokens.verify(key, task_id, token)
    start = _resume_point(last_event_id, after)
    task = await anyio.to_thread.run_sync(deps.tasks.get, task_id)  # 404 before the 200

    async def events() -> AsyncIterator[ServerSentEvent]:
        left_early = True
        try:
            async for event in follow(
                deps.log,
                task_id,
                start,
                pacer=Pacer(
                    interval=settings.stream_poll_interval_ms / 1000,
                    max_interval=settings.stream_poll_max_interval_ms / 1000,
                    write_interval=settings.chunk_flush_interval_ms / 1000,
                ),
                max_seconds=settings.stream_max_seconds,
            ):
                yield ServerSentEvent(data=event.sse_data(), id=str(event.seq))
            left_early = False  # the terminal event, or the end of this response's time
        except StoreUnavailable as e:
            # The chunk log does not answer: end this response cleanly; the client resumes
            # with Last-Event-ID, as after any disconnect (a cut body would look like an
            # error to it, and the viewer has not left: no cancel-on-disconnect).
            left_early = False
            logger.warning("chunk log unavailable, ending the stream of %s: %s", task_id, e)
        finally:
            if left_early and task.cancel_on_disconnect:
                # The viewer went away and the request asked to stop then. The response is
                # being torn down (cancelled): shield the call that records the cancel.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(deps.tasks.request_cancel, task_id)

    return EventSourceResponse(
        events(),
        ping=settings.stream_ping_seconds,
        ping_message_factory=_ping,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@lru_cache(maxsize=1)
def _async_model() -> AsyncOpenAI:
    return make_async_client(settings)


@app.post(
    "/direct",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The answer, as it comes"},
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
    },
)
async def direct(body: ChatRequest) -> StreamingResponse:
    """Direct mode: stream an answer straight from the model as text/plain, without the
    queue (the older RabbitMQ service's mode). The session id comes back in X-Session-ID.
    Nothing is recorded: no resume, no status; a disconnect stops the model call."""
    if not settings.direct_mode_enabled:
        raise HTTPException(404, "direct mode is disabled (template parameter EnableDirectMode)")
    session_id = body.session_id or uuid.uuid4().hex
    task = Task(
        task_id=uuid.uuid4().hex,
        session_id=session_id,
        status="running",
        model=body.model or settings.model_id,
        message=body.message,
        system=body.system,
        max_tokens=min(body.max_tokens or settings.max_tokens_limit, settings.max_tokens_limit),
        temperature=body.temperature,
    )
    client = await anyio.to_thread.run_sync(_async_model)  # reads the key secret once

    async def text() -> AsyncIterator[str]:
        try:
            async for piece in direct_pieces(client, task):
                yield piece
        except OpenAIError as e:
            yield f"\n[error: model error: {e}]"

    return StreamingResponse(
        text(),
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Session-ID": session_id,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )


@app.get("/health", response_model=Health)
def health() -> Health:
    return Health(service="stream")
