"""The stream function's core: follow a task's chunk log from a seq, without blocking."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio

from llmstream.chunklog.base import ChunkLog
from llmstream.models import Event

# Read window: small while live (one new chunk per poll is the norm), growing while a
# resumed client catches up on a long backlog, so a catch-up costs a few calls, not one per
# chunk. The DynamoDB backend reads these keys in one BatchGetItem.
_LIVE_WINDOW = 4
_MAX_WINDOW = 100


async def follow(
    log: ChunkLog,
    task_id: str,
    after: int,
    *,
    poll_interval: float,
    max_seconds: float,
) -> AsyncIterator[Event]:
    """Yield the task's events after ``after`` until its terminal event.

    Ends early (without a terminal event) after ``max_seconds``, so a response never outlives
    the function URL's limit; the client then reconnects with Last-Event-ID.
    """
    deadline = time.monotonic() + max_seconds
    window = _LIVE_WINDOW
    while time.monotonic() < deadline:
        # boto3 blocks: run it in a worker thread, never on the event loop (STYLE.md #7).
        batch = await anyio.to_thread.run_sync(log.read, task_id, after, window)
        for event in batch:
            yield event
            after = event.seq
            if event.terminal:
                return
        if len(batch) == window:
            window = min(window * 4, _MAX_WINDOW)  # behind: read more per call, no pause
            continue
        window = _LIVE_WINDOW
        await anyio.sleep(poll_interval)
