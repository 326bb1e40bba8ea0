"""The worker's coalescing of tokens into chunk-log writes (in-memory log: unit tier)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llmstream.chunklog.base import ChunkLog
from llmstream.chunklog.writer import ChunkWriter
from llmstream.exceptions import SeqConflict
from llmstream.models import Event, EventKind

pytestmark = pytest.mark.unit


class MemoryLog(ChunkLog):
    def __init__(self) -> None:
        self.events: dict[str, dict[int, Event]] = {}

    def append(self, task_id: str, seq: int, kind: EventKind, data: dict[str, Any]) -> None:
        log = self.events.setdefault(task_id, {})
        if seq in log:
            raise SeqConflict(str(seq))
        log[seq] = Event(seq, kind, data)

    def read(self, task_id: str, after: int, limit: int) -> list[Event]:
        log = self.events.get(task_id, {})
        out = []
        while after + 1 in log and len(out) < limit:
            after += 1
            out.append(log[after])
        return out

    def last(self, task_id: str) -> Event | None:
        log = self.events.get(task_id, {})
        return log[max(log)] if log else None

    def delete(self, task_id: str) -> None:
        self.events.pop(task_id, None)

    def ping(self) -> str:
        return "ok"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def writer(log: MemoryLog, clock: Clock, **kw: Any) -> ChunkWriter:
    return ChunkWriter(
        log,
        "t",
        next_seq=kw.pop("next_seq", 1),
        interval=0.1,
        max_chars=kw.pop("max_chars", 1000),
        clock=clock,
        **kw,
    )


def test_first_token_is_written_at_once_then_coalesced_per_interval() -> None:
    # GIVEN a writer with a 100 ms window
    log, clock = MemoryLog(), Clock()
    w = writer(log, clock)
    # WHEN tokens arrive every 20 ms
    for i in range(12):
        clock.now = i * 0.02
        w.add(f"t{i} ")
    w.event("done", {"type": "done"})
    # THEN the first token is its own chunk, later ones share ~100 ms chunks
    events = log.read_all("t")
    chunks = [e.data["chunk"] for e in events if e.kind == "chunk"]
    assert chunks[0] == "t0 "
    assert "".join(chunks) == "".join(f"t{i} " for i in range(12))
    assert len(chunks) <= 4
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].kind == "done"


def test_size_limit_flushes_and_splits_long_text() -> None:
    log, clock = MemoryLog(), Clock()
    w = writer(log, clock, max_chars=10)
    w.add("a")  # first: written at once
    w.add("b" * 25)  # over the limit at the same instant: written, split in 10s
    events = log.read_all("t")
    assert [e.data["chunk"] for e in events] == ["a", "b" * 10, "b" * 10, "b" * 5]


def test_terminal_event_flushes_held_text_first() -> None:
    log, clock = MemoryLog(), Clock()
    w = writer(log, clock)
    w.add("x")
    w.add("y")  # held: same instant as the first write
    assert [e.kind for e in log.read_all("t")] == ["chunk"]
    w.event("done", {"type": "done"})
    assert [(e.kind, e.data) for e in log.read_all("t")] == [
        ("chunk", {"chunk": "x"}),
        ("chunk", {"chunk": "y"}),
        ("done", {"type": "done"}),
    ]


def test_writer_continues_after_a_previous_attempt() -> None:
    log, clock = MemoryLog(), Clock()
    log.append("t", 1, "chunk", {"chunk": "old"})
    w = writer(log, clock, next_seq=2)
    w.event("reset", {"type": "reset", "attempt": 2})
    assert w.seq == 2
    assert log.last("t") == Event(2, "reset", {"type": "reset", "attempt": 2})


def test_a_second_writer_at_the_same_seq_loses() -> None:
    log, clock = MemoryLog(), Clock()
    writer(log, clock).add("mine")
    with pytest.raises(SeqConflict):
        writer(log, clock).add("theirs")


def wait_for(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_started_writer_flushes_held_text_when_the_model_pauses() -> None:
    # GIVEN a started writer (real clock) that wrote the first token and holds the second
    log = MemoryLog()
    w = ChunkWriter(log, "t", next_seq=1, interval=0.05, max_chars=1000).start()
    try:
        w.add("first ")
        w.add("held")
        assert [e.data["chunk"] for e in log.read_all("t")] == ["first "]
        # WHEN no further token comes
        # THEN the held text is written once its interval is up
        assert wait_for(lambda: len(log.read_all("t")) == 2)
        assert [e.data["chunk"] for e in log.read_all("t")] == ["first ", "held"]
    finally:
        w.close()


def test_a_flusher_error_is_raised_in_the_token_loop() -> None:
    # GIVEN a log that refuses the second write, and a started writer holding text
    class Refusing(MemoryLog):
        def append(self, task_id: str, seq: int, kind: EventKind, data: dict[str, Any]) -> None:
            if seq == 2:
                raise SeqConflict("taken")
            super().append(task_id, seq, kind, data)

    log = Refusing()
    w = ChunkWriter(log, "t", next_seq=1, interval=0.02, max_chars=1000).start()
    try:
        w.add("a")
        w.add("b")  # the flusher's write of this fails
        assert wait_for(lambda: w._error is not None)
        # THEN the next call in the token loop raises it (the worker's ClaimLost path)
        with pytest.raises(SeqConflict):
            w.add("c")
    finally:
        w.close()


def test_a_zombie_that_wrote_at_our_seq_is_overwritten_by_a_reset_and_our_text() -> None:
    # GIVEN attempt 2, which holds the claim and has written "Hello "
    log, clock = MemoryLog(), Clock()
    log.append("t", 1, "chunk", {"chunk": "old "})  # attempt 1, before it died (it thought)
    w = writer(log, clock, next_seq=2, attempt=2, still_mine=lambda: True)
    w.event("reset", {"type": "reset", "attempt": 2})
    w.add("Hello ")
    # WHEN attempt 1, a zombie whose heartbeat lapsed, writes at the next seq first
    log.append("t", 4, "chunk", {"chunk": "zombie "})
    clock.now = 1.0
    w.add("world")
    w.event("done", {"type": "done"})
    # THEN the log stays dense, and the text after its last reset is attempt 2's alone
    events = log.read_all("t")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    last_reset = max(i for i, e in enumerate(events) if e.kind == "reset")
    after = "".join(e.data.get("chunk", "") for e in events[last_reset + 1 :])
    assert after == "Hello world"
    assert events[-1].kind == "done"


def test_a_writer_that_lost_its_claim_stops_at_the_conflict() -> None:
    log, clock = MemoryLog(), Clock()
    w = writer(log, clock, attempt=1, still_mine=lambda: False)
    w.add("a")
    log.append("t", 2, "reset", {"type": "reset", "attempt": 2})  # the newer attempt
    clock.now = 1.0
    with pytest.raises(SeqConflict):
        w.add("b")


def test_calls_and_their_arguments_are_written_in_order_with_held_text_first() -> None:
    # GIVEN a writer holding text
    log, clock = MemoryLog(), Clock()
    w = writer(log, clock)
    w.add("Let me ")
    w.add("look.")  # held: same instant as the first write
    # WHEN the model starts two calls, their arguments coming in pieces
    w.call("c1", "get_weather")
    for piece in ('{"city"', ':"Oslo"', "}"):
        w.arguments(piece)
    w.call("c2", "get_time")
    w.arguments("{}")
    w.event("done", {"type": "done"})
    # THEN the text, each call, then its arguments (the first piece at once, the rest held),
    # in seq order; and the writer knows its calls whole
    events = log.read_all("t")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.kind, e.data) for e in events] == [
        ("chunk", {"chunk": "Let me "}),
        ("chunk", {"chunk": "look."}),
        ("call", {"type": "call", "id": "c1", "name": "get_weather"}),
        ("args", {"type": "args", "delta": '{"city":"Oslo"}'}),
        ("call", {"type": "call", "id": "c2", "name": "get_time"}),
        ("args", {"type": "args", "delta": "{}"}),
        ("done", {"type": "done"}),
    ]
    assert w.calls == [
        {"id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"id": "c2", "name": "get_time", "arguments": "{}"},
    ]
    assert w.said == 'Let me look.get_weather{"city":"Oslo"}get_time{}'


def test_a_zombie_at_our_seq_is_overwritten_with_our_calls_too() -> None:
    log, clock = MemoryLog(), Clock()
    w = writer(log, clock, next_seq=1, attempt=2, still_mine=lambda: True)
    w.call("c1", "f")
    w.arguments('{"a":1}')
    log.append("t", 3, "chunk", {"chunk": "zombie "})
    clock.now = 1.0
    w.arguments("")  # nothing new: nothing written
    w.call("c2", "g")
    w.event("done", {"type": "done"})
    events = log.read_all("t")
    last_reset = max(i for i, e in enumerate(events) if e.kind == "reset")
    after = [(e.kind, e.data) for e in events[last_reset + 1 :]]
    assert after == [
        ("call", {"type": "call", "id": "c1", "name": "f"}),
        ("args", {"type": "args", "delta": '{"a":1}'}),
        ("call", {"type": "call", "id": "c2", "name": "g"}),
        ("done", {"type": "done"}),
    ]
