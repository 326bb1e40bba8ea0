"""The OpenAI-compatible routes: the Responses API (with background mode: resume, cancel),
Chat Completions and the model list, as a thin adapter over the chat pipeline.

Every request here is a chat task like POST /chat's (intake.py): queued, answered by the
worker into the chunk log, counted by the same quotas, visible in GET /chat/{id} and the
dashboard. A response's id is its task's (``resp_<task_id>``), so another user's id is
404 here exactly as there. A caller signs in with a Bearer: a user pool token, or a
personal API key (api_keys.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from llmstream import intake, observe
from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.exceptions import BadRequest, ModelNotAllowed, TaskNotFound
from llmstream.leases import HeldLease
from llmstream.models import ChatRequest
from llmstream.settings import get_settings
from llmstream.streaming import Render, follow_task, live_events, ping, take_lease
from llmstream.tasks import Task
from llmstream.v1 import errors
from llmstream.v1.completions import CompletionChunks, completion_object
from llmstream.v1.replay import Replay
from llmstream.v1.responses import ResponseEvents, response_object
from llmstream.v1.schemas import (
    RESPONSE_ID,
    ChatCompletionsRequest,
    ResponsesRequest,
    to_chat_request,
)
from llmstream.web import CurrentUser, DepsDep

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
ResponseId = Annotated[str, Path(description="resp_<32 hex>, as POST /v1/responses gave it")]
_CANCEL_WAIT_SECONDS = 5.0  # a cancel answers once the worker has stopped, or after this


def _task_id(response_id: str) -> str:
    if not re.fullmatch(RESPONSE_ID, response_id):
        raise TaskNotFound(response_id)
    return response_id.removeprefix("resp_")


async def _owned(deps: Deps, user: Principal, response_id: str) -> Task:
    """The caller's response (404 for another user's, as for one that does not exist)."""
    task_id = _task_id(response_id)
    try:
        task = await anyio.to_thread.run_sync(deps.tasks.owned_by(user.sub).get, task_id)
    except TaskNotFound as e:
        raise TaskNotFound(response_id) from e
    observe.correlate(task_id=task.task_id, trace_id=task.trace_id)
    return task


async def _replayed(deps: Deps, task: Task) -> Replay:
    """The fold of the task's whole log as it stands."""
    replay = Replay()
    for event in await anyio.to_thread.run_sync(deps.log.read_all, task.task_id):
        replay.feed(event)
    return replay


async def _waited(deps: Deps, task: Task, held: HeldLease) -> Replay:
    """The fold of the task's log once it ends (or STREAM_MAX_SECONDS pass)."""
    replay = Replay()
    try:
        async for event in follow_task(deps, task.task_id, 0):
            await held.tick()
            replay.feed(event)
    finally:
        await held.release()
    return replay


async def _accept(
    deps: Deps, user: Principal, request: ChatRequest, extras: dict[str, Any], held: bool
) -> tuple[Task, HeldLease | None]:
    """The request as a task, with one of the caller's stream slots if it is answered on
    this connection (taken first: refusing it for too many streams spends nothing)."""
    metrics = observe.Record("stream", mode="v1")
    lease = await take_lease(deps, user.sub, metrics) if held else None
    try:
        settings = get_settings()
        task = await anyio.to_thread.run_sync(
            partial(intake.accept, deps, settings, user, request, extras=extras, service="stream")
        )
    except BaseException:
        if lease is not None:
            await lease.release()
        raise
    return task, lease


def _sse(
    deps: Deps, task: Task, held: HeldLease, events: AsyncIterator[ServerSentEvent]
) -> EventSourceResponse:
    return EventSourceResponse(
        events,
        ping=deps.settings.stream_ping_seconds,
        ping_message_factory=ping,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(held.release),  # if the events never started
    )


async def _response_events(
    deps: Deps, task: Task, held: HeldLease, starting_after: int | None
) -> AsyncIterator[ServerSentEvent]:
    events = ResponseEvents(task, starting_after)
    for sse in events.opening():
        yield sse
    metrics = observe.Record("stream", mode="v1")
    metrics.count("StreamsOpened")
    async for sse in live_events(deps, task, 0, metrics, held, render=events):
        yield sse
    if not task.store and events.replay.finished is not None:
        await anyio.to_thread.run_sync(intake.forget, deps, task)


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponsesRequest, user: CurrentUser, deps: DepsDep
) -> EventSourceResponse | JSONResponse:
    """Create a model response (OpenAI's Responses API). ``background: true`` answers at
    once (status queued); ``stream: true`` streams its events; neither waits for the end."""
    session_id, previous = None, body.previous_response_id
    if previous is not None:
        try:
            session_id = (await _owned(deps, user, previous)).session_id
        except TaskNotFound as e:
            raise BadRequest(
                f"Previous response with id '{previous}' not found.",
                "previous_response_id",
                status=404,  # another user's, as one that does not exist
            ) from e
    messages = body.messages()
    request = to_chat_request(
        messages,
        model=body.model,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        system=body.instructions,
        session_id=session_id,
        # OpenAI's own rule: a streamed response that is not in the background stops when
        # its client leaves; a background one goes on, to be resumed.
        cancel_on_disconnect=body.stream and not body.background,
    )
    extras = {
        "input": messages,
        "top_p": body.top_p,
        "metadata": _json(body.metadata),
        "api": "responses",
        "background": body.background,
        "store": body.store,
        "previous_response_id": previous,
        **body.tool_fields(),
    }
    connected = body.stream or not body.background
    task, held = await _accept(deps, user, request, extras, connected)
    if held is None:
        return JSONResponse(response_object(task, Replay()))
    if body.stream:
        return _sse(deps, task, held, _response_events(deps, task, held, None))
    replay = await _waited(deps, task, held)
    if not task.store and replay.finished is not None:
        await anyio.to_thread.run_sync(intake.forget, deps, task)
    row = await anyio.to_thread.run_sync(deps.tasks.get, task.task_id)
    return JSONResponse(response_object(row, replay))


@router.get("/responses/{response_id}", response_model=None)
async def retrieve_response(
    response_id: ResponseId,
    user: CurrentUser,
    deps: DepsDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> EventSourceResponse | JSONResponse:
    """A response; with ``stream=true`` its events from the start (or after
    ``starting_after``), then live until it ends: the same events and numbers every time."""
    task = await _owned(deps, user, response_id)
    if not stream:
        return JSONResponse(response_object(task, await _replayed(deps, task)))
    held = await take_lease(deps, user.sub, observe.Record("stream", mode="v1"))
    return _sse(deps, task, held, _response_events(deps, task, held, starting_after))


@router.post("/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: ResponseId, user: CurrentUser, deps: DepsDep) -> Any:
    """Cancel a response that is queued or running; again, or on a cancelled one, changes
    nothing. A finished one cannot be cancelled (400, as OpenAI answers)."""
    task = await _owned(deps, user, response_id)
    if task.status in ("done", "error"):
        status = "completed" if task.status == "done" else "failed"
        raise BadRequest(f"Cannot cancel a {status} response.")
    await anyio.to_thread.run_sync(intake.cancel, deps, user, task.task_id)
    deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
    # Wait on the log's last event alone (one read), then fold the whole log once.
    last = await anyio.to_thread.run_sync(deps.log.last, task.task_id)
    while not (last and last.terminal) and time.monotonic() < deadline:
        await anyio.sleep(0.2)  # the worker stops within CANCEL_CHECK_INTERVAL_MS
        last = await anyio.to_thread.run_sync(deps.log.last, task.task_id)
    replay = await _replayed(deps, task)
    row = await anyio.to_thread.run_sync(deps.tasks.get, task.task_id)
    return JSONResponse(response_object(row, replay))


@router.delete("/responses/{response_id}", response_model=None)
async def delete_response(response_id: ResponseId, user: CurrentUser, deps: DepsDep) -> Any:
    """Delete a response: its text and events (a running one stops)."""
    task = await _owned(deps, user, response_id)
    await anyio.to_thread.run_sync(intake.forget, deps, task)
    return {"id": response_id, "object": "response", "deleted": True}


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionsRequest, user: CurrentUser, deps: DepsDep
) -> EventSourceResponse | JSONResponse:
    """A chat completion (OpenAI's Chat Completions API), streamed or whole; behind it a
    durable task like any other (a killed worker's answer is retried)."""
    messages = body.messages_sent()
    request = to_chat_request(
        messages,
        model=body.model,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        cancel_on_disconnect=True,  # as OpenAI: a client that leaves stops the answer
    )
    extras = {
        "input": messages,
        "top_p": body.top_p,
        "metadata": _json(body.metadata),
        **body.tool_fields(),
    }
    task, held = await _accept(deps, user, request, {**extras, "api": "chat.completions"}, True)
    assert held is not None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        render: Render = CompletionChunks(task, include_usage=usage)
        metrics = observe.Record("stream", mode="v1")
        return _sse(deps, task, held, live_events(deps, task, 0, metrics, held, render=render))
    done = completion_object(task, await _waited(deps, task, held))
    if done is None:
        message = f"the answer is still running after {deps.settings.stream_max_seconds}s"
        return JSONResponse(errors.body(message, 504), status_code=504)
    return JSONResponse(done, status_code=_failed_status(done) if "error" in done else 200)


@router.get("/models")
def list_models(user: CurrentUser) -> dict[str, Any]:
    """The models this deployment answers with (MODEL_ID and ALLOWED_MODELS)."""
    return {"object": "list", "data": [_model(m) for m in _offered()]}


@router.get("/models/{model:path}")
def retrieve_model(model: str, user: CurrentUser) -> dict[str, Any]:
    """One model this deployment answers with (404 for any other)."""
    if model not in _offered():
        raise ModelNotAllowed(f"The model '{model}' does not exist or is not offered here.")
    return _model(model)


def _failed_status(body: dict[str, Any]) -> int:
    """The status of a chat completion whose answer failed: the model's own refusal of the
    request (4xx) is the client's to fix, as OpenAI answers it; anything else is ours."""
    status = body["error"].pop("status", None)
    return status if isinstance(status, int) and 400 <= status < 500 else 502


def _json(metadata: dict[str, str] | None) -> str | None:
    return json.dumps(metadata, ensure_ascii=False) if metadata else None


def _offered() -> list[str]:
    settings = get_settings()
    allowed = [m.strip() for m in settings.allowed_models.split(",") if m.strip() != "*"]
    return list(dict.fromkeys([settings.model_id, *filter(None, allowed)]))


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "llmstream"}
