"""A task's chunk log as a live SSE response: the caller's stream slot, the events as they
come, keep-alives, and how the response ends (its metrics, its closing log line, and a
cancel when a viewer who asked for one leaves early).

GET /stream (stream.py) sends the log's own events; the OpenAI-compatible routes (v1/) send
the same log rendered as OpenAI's events, through ``render``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable

import anyio
from sse_starlette import ServerSentEvent

from llmstream import observe
from llmstream.deps import Deps
from llmstream.exceptions import StoreUnavailable, TooManyStreams
from llmstream.follow import Pacer, follow, watched
from llmstream.leases import HeldLease
from llmstream.models import Event
from llmstream.tasks import Task, worker_lost

logger = observe.logger

# One log event as the SSE events a client is sent (none, one, or several).
Render = Callable[[Event], Iterable[ServerSentEvent]]


def ping() -> ServerSentEvent:
    """The keep-alive: an SSE comment, which every client skips."""
    return ServerSentEvent(comment="ping")


async def take_lease(deps: Deps, owner: str, metrics: observe.Record) -> HeldLease:
    """One of ``owner``'s open-stream slots (leases.py), or TooManyStreams (429)."""
    try:
        lease = await anyio.to_thread.run_sync(deps.leases.acquire, owner)
    except TooManyStreams:
        metrics.count("StreamsRefused")
        metrics.flush()
        raise
    return HeldLease(deps.leases, lease)


def follow_task(deps: Deps, task_id: str, after: int) -> AsyncIterator[Event]:
    """The task's log events after ``after``, live, until its terminal event or the end of
    a response's time (STREAM_MAX_SECONDS)."""
    settings = deps.settings
    return follow(
        deps.log,
        task_id,
        after,
        pacer=Pacer(
            interval=settings.stream_poll_interval_ms / 1000,
            max_interval=settings.stream_poll_max_interval_ms / 1000,
            write_interval=settings.flush_interval_seconds,
        ),
        max_seconds=settings.stream_max_seconds,
    )


def _as_sse(event: Event) -> Iterable[ServerSentEvent]:
    return (ServerSentEvent(data=event.sse_data(), id=str(event.seq)),)


async def live_events(
    deps: Deps,
    task: Task,
    start: int,
    metrics: observe.Record,
    held: HeldLease,
    render: Render | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """The task's events after ``start`` as SSE (the log's own, or ``render``'s), a status
    event when its worker is lost (the log's own only), and the response's metrics and
    closing log line; a viewer leaving early cancels the answer if the request asked for
    that."""
    task_id = task.task_id
    window = deps.settings.worker_heartbeat_seconds
    told = False

    async def on_quiet() -> ServerSentEvent | None:
        # A silence: is the answer's worker alive? A running task that missed two heartbeats
        # lost its worker; its message is back on the queue within the heartbeat window and
        # a new attempt starts with a reset. Say so once, as a named event (`event:
        # status`), which clients that do not listen for named events ignore.
        nonlocal told
        await held.tick()  # a silence is no reason to lose the stream's slot
        if render is not None:
            return None  # OpenAI's clients know no such event: keep-alives say enough
        row = await anyio.to_thread.run_sync(deps.tasks.get, task_id)
        if told or not worker_lost(row, window, time.time()):
            return None
        told = True
        state = {"state": "worker_lost", "attempt": row.attempt, "since": row.heartbeat_at}
        return ServerSentEvent(event="status", data=json.dumps(state))

    left_early = True
    sent, ending, opened = 0, "viewer left", time.monotonic()
    try:
        followed = follow_task(deps, task_id, start)
        async for event in watched(followed, min(5.0, window / 4), on_quiet):
            await held.tick()
            if isinstance(event, ServerSentEvent):
                yield event
                continue
            told = False
            for out in (render or _as_sse)(event):
                yield out
                sent += 1
            if event.terminal:
                ending = event.kind
        left_early = False  # the terminal event, or the end of this response's time
        if ending == "viewer left":
            ending = "time limit"  # STREAM_MAX_SECONDS: the client resumes
            metrics.count("StreamsCutShort")
    except StoreUnavailable as e:
        # The chunk log does not answer: end this response cleanly; the client resumes
        # with Last-Event-ID, as after any disconnect (a cut body would look like an
        # error to it, and the viewer has not left: no cancel-on-disconnect).
        left_early = False
        ending = "store unavailable"
        metrics.count("StreamsCutShort")
        logger.warning("chunk log unavailable, ending the stream of %s: %s", task_id, e)
    finally:
        await held.release()  # first: nothing below may keep the slot from coming back
        seconds = time.monotonic() - opened
        metrics.measure("StreamDuration", seconds, observe.Unit.Seconds)
        metrics.flush()
        logger.info(
            "stream closed",
            extra={"ending": ending, "events": sent, "seconds": round(seconds, 3)},
        )
        if left_early and task.cancel_on_disconnect:
            # The viewer went away and the request asked to stop then. The response is
            # being torn down (cancelled): shield the call that records the cancel.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(deps.tasks.cancel_on_disconnect, task_id, task.owner)
