"""When a stream reads the chunk log next (Pacer) and that following a live writer delivers
every event once, in order (in-memory log: unit tier)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from llmstream.chunklog.base import ChunkLog
from llmstream.follow import Pacer, follow
from llmstream.models import Event, EventKind

pytestmark = pytest.mark.unit


def pacer() -> Pacer:
    return Pacer(interval=0.025, max_interval=0.5, write_interval=0.1, lag=0.01)


def test_after_an_event_the_next_read_is_when_the_next_write_is_due() -> None:
    p = pacer()
    p.saw(Event(1, "chunk", {"chunk": "a"}, written_at=100.0))
    assert not p.behind(100.05)
    assert p.wait(100.03, found=True) == pytest.approx(0.08)
    assert p.behind(100.2)  # the next write may be there: read at once


def test_empty_reads_poll_fast_for_a_while_then_back_off_to_the_cap() -> None:
    p = pacer()
    waits = [p.wait(10.0 + 0.1 * i, found=False) for i in range(30)]
    assert waits[:10] == [0.025] * 10  # the first second: eager (a model's first token)
    assert waits[10] > 0.025
    assert waits == sorted(waits)
    assert waits[-1] == 0.5
    # an event starts the eager phase over
    p.saw(Event(1, "chunk", {}, written_at=20.0))
    assert p.wait(30.0, found=False) == 0.025


def test_events_without_a_write_time_are_read_at_the_poll_interval() -> None:
    p = pacer()
    p.saw(Event(1, "chunk", {}))
    assert p.behind(0.0)
    assert p.wait(0.0, found=True) == 0.025


class CountingLog(ChunkLog):
    def __init__(self) -> None:
        self.events: dict[int, Event] = {}
        self.reads = 0
        self.lock = threading.Lock()

    def append(self, task_id: str, seq: int, kind: EventKind, data: dict[str, Any]) -> None:
        with self.lock:
            self.events[seq] = Event(seq, kind, data, written_at=time.time())

    def read(self, task_id: str, after: int, limit: int) -> list[Event]:
        with self.lock:
            self.reads += 1
            out = []
            while after + 1 in self.events and len(out) < limit:
                after += 1
                out.append(self.events[after])
            return out

    def last(self, task_id: str) -> Event | None:
        return self.events[max(self.events)] if self.events else None

    def delete(self, task_id: str) -> None:
        self.events.clear()

    def ping(self) -> str:
        return "ok"


def follow_all(log: ChunkLog, after: int = 0) -> list[int]:
    async def read() -> list[int]:
        p = Pacer(interval=0.005, max_interval=0.05, write_interval=0.02, lag=0.0, min_lag=0.0)
        return [e.seq async for e in follow(log, "t", after, pacer=p, max_seconds=20)]

    return anyio.run(read)


def test_a_resumed_viewer_catches_up_on_a_backlog_in_a_few_reads() -> None:
    log = CountingLog()
    for seq in range(1, 200):
        log.append("t", seq, "chunk", {"chunk": str(seq)})
    log.append("t", 200, "done", {"type": "done"})
    time.sleep(0.03)  # written a while ago (the writer's interval here is 20 ms)
    assert follow_all(log, after=20) == list(range(21, 201))
    assert log.reads <= 5  # windows of 1, 4, 16, 64, 100 keys


def test_following_a_live_writer_delivers_each_event_once_in_order() -> None:
    log = CountingLog()

    def write() -> None:
        for seq in range(1, 21):
            time.sleep(0.01 if seq % 3 else 0.06)  # steady, with pauses
            log.append("t", seq, "chunk", {"chunk": str(seq)})
        log.append("t", 21, "done", {"type": "done"})

    writer = threading.Thread(target=write)
    writer.start()
    seqs = follow_all(log)
    writer.join()
    assert seqs == list(range(1, 22))


def test_the_lag_grows_when_a_due_read_finds_nothing_and_shrinks_when_it_hits() -> None:
    p = pacer()
    p.saw(Event(1, "chunk", {}, written_at=100.0))
    p.wait(100.01, found=True)  # sleeps until the next write is due
    p.wait(100.11, found=False)  # ... which was not visible yet
    assert p.lag == pytest.approx(0.02)
    p.saw(Event(2, "chunk", {}, written_at=100.12))  # found on a later poll: no change
    assert p.lag == pytest.approx(0.02)
    p.wait(100.13, found=True)
    p.saw(Event(3, "chunk", {}, written_at=100.22))  # found by the due read: come sooner
    assert p.lag == pytest.approx(0.018)
