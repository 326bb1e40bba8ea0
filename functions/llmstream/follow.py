"""The stream function's core: follow a task's chunk log from a seq, without blocking.

A backend that pushes (Redis Streams) is followed with blocking reads: XREAD BLOCK wakes
the stream when the worker writes. DynamoDB cannot push, so a stream polls; the question is
when. The worker writes at most once per flush interval (ChunkWriter) and stamps each event
with its write time, so after an event the next one cannot exist before
``written_at + interval``: the reader sleeps until then, and one read usually finds one new
event. Reads that find nothing (the model has not
started yet, or pauses) poll at a short interval at first, then back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from llmstream.chunklog.base import ChunkLog
from llmstream.models import Event

# Read window: one key while live (one new event per read is the norm, and a key read costs
# one read unit whether it finds an item or not), growing while a resumed client catches up
# on a long backlog, so a catch-up costs a few calls, not one per event.
_LIVE_WINDOW = 1
_MAX_WINDOW = 100
T = TypeVar("T")
U = TypeVar("U")


@dataclass
class Pacer:
    """How long to wait before the next read.

    After an event stamped ``written_at`` (when its write started), the next write starts
    ``write_interval`` after that write ended and is visible a write later: ``lag`` stands
    for those two write latencies. It adapts: a read at the due time that finds nothing
    raises it, one that finds the event lowers it, so the reader settles just behind the
    writer whatever the store's latency, at about one read per write.
    """

    interval: float  # poll interval while nothing is known
    max_interval: float  # longest wait during a long silence
    write_interval: float  # the writer writes at most once per this
    lag: float = 0.02  # two writes' latency (adapts)
    min_lag: float = 0.005
    max_lag: float = 0.1
    eager_seconds: float = 1.0  # poll at ``interval`` this long before backing off
    _empty: int = 0
    _empty_since: float | None = None
    _written_at: float | None = None
    _due_read: bool = False  # the last read was the one timed for a due write

    def _next_write(self) -> float | None:
        if self._written_at is None:
            return None
        return self._written_at + self.write_interval + self.lag

    def saw(self, event: Event) -> None:
        if self._due_read:
            self.lag = max(self.min_lag, self.lag - 0.002)  # found at once: come sooner
        self._due_read = False
        self._empty, self._empty_since = 0, None
        self._written_at = event.written_at

    def behind(self, now: float) -> bool:
        """True when a next event may already exist (read again at once)."""
        due = self._next_write()
        return due is None or due <= now

    def wait(self, now: float, found: bool) -> float:
        """Seconds to sleep after a read that found (or not) new events."""
        due = self._next_write()
        if found:
            if due is not None and due > now:
                self._due_read = True
                return due - now
            return self.interval
        if self._due_read:  # the due write was not visible yet: wait longer next time
            self.lag = min(self.max_lag, self.lag + 0.01)
            self._due_read = False
        self._empty += 1
        if self._empty_since is None:
            self._empty_since = now
        if now - self._empty_since < self.eager_seconds:
            return self.interval
        return float(min(self.max_interval, self.interval * 1.5**self._empty))


async def follow(
    log: ChunkLog,
    task_id: str,
    after: int,
    *,
    pacer: Pacer,
    max_seconds: float,
) -> AsyncIterator[Event]:
    """Yield the task's events after ``after`` until its terminal event.

    Ends early (without a terminal event) after ``max_seconds``, so a response never outlives
    the function URL's limit; the client then reconnects with Last-Event-ID.
    """
    if log.pushes:
        async for event in _follow_pushed(log, task_id, after, pacer, max_seconds):
            yield event
        return
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
        if batch:
            pacer.saw(batch[-1])
        if len(batch) == window and pacer.behind(time.time()):
            window = min(window * 4, _MAX_WINDOW)  # behind: read more per call, no pause
            continue
        window = _LIVE_WINDOW
        await anyio.sleep(pacer.wait(time.time(), bool(batch)))


async def _follow_pushed(
    log: ChunkLog, task_id: str, after: int, pacer: Pacer, max_seconds: float
) -> AsyncIterator[Event]:
    deadline = time.monotonic() + max_seconds
    while (remaining := deadline - time.monotonic()) > 0:
        batch, woke = await log.read_wait(task_id, after, _MAX_WINDOW, remaining)
        for event in batch:
            yield event
            after = event.seq
            if event.terminal:
                return
        if woke and not batch:
            # Something past a gap: the writer's next event fills it (it never does on
            # Redis, where IDs only grow; this keeps a broken log from spinning a core).
            await anyio.sleep(pacer.interval)


async def watched(
    source: AsyncIterator[T], quiet: float, on_quiet: Callable[[], Awaitable[U | None]]
) -> AsyncIterator[T | U]:
    """``source``'s items; after each ``quiet`` seconds without one, ``on_quiet()``'s
    answer too, if it has one (the stream's "worker lost" notice during a silence)."""
    pending = asyncio.ensure_future(anext(source))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=quiet)
            if not done:
                extra = await on_quiet()
                if extra is not None:
                    yield extra
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
            pending = asyncio.ensure_future(anext(source))
    finally:
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
