"""The chunk-log contract, against each backend on its real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from llmstream.chunklog.base import ChunkLog
from llmstream.chunklog.dynamodb import DynamoDBChunkLog
from llmstream.chunklog.redis import RedisChunkLog
from llmstream.exceptions import LogDiverged, SeqConflict
from llmstream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["dynamodb", "redis"])
def log(request: pytest.FixtureRequest, settings: Settings, clients: dict[str, Any]) -> ChunkLog:
    factories: dict[str, Callable[[], ChunkLog]] = {
        "dynamodb": lambda: DynamoDBChunkLog(settings.chunks_table, clients["dynamodb"], 3600),
        "redis": lambda: RedisChunkLog(request.getfixturevalue("redis_url"), 3600),
    }
    return factories[request.param]()


def write_behind_the_log(
    log: ChunkLog, settings: Settings, clients: dict[str, Any], task_id: str, seq: int
) -> None:
    """Put an event straight into the store, past the append's checks (a gap, as a store
    that lost events or a reader racing a writer would see)."""
    if isinstance(log, RedisChunkLog):
        redis.Redis.from_url(log._url).xadd(
            log.key(task_id), {"kind": "chunk", "data": '{"chunk":"x"}'}, id=f"0-{seq}"
        )
    else:
        clients["dynamodb"].put_item(
            TableName=settings.chunks_table,
            Item={
                "task_id": {"S": task_id},
                "seq": {"N": str(seq)},
                "kind": {"S": "chunk"},
                "data": {"S": '{"chunk":"x"}'},
            },
        )


def empty_the_log(log: ChunkLog, settings: Settings, clients: dict[str, Any], t: str) -> None:
    """What a store restart without persistence does to a log (DynamoDB: a deletion)."""
    if isinstance(log, RedisChunkLog):
        redis.Redis.from_url(log._url).delete(log.key(t))
        return
    for event in log.read_all(t):
        clients["dynamodb"].delete_item(
            TableName=settings.chunks_table,
            Key={"task_id": {"S": t}, "seq": {"N": str(event.seq)}},
        )


def task() -> str:
    return uuid.uuid4().hex


def test_append_then_read_in_order(log: ChunkLog) -> None:
    t = task()
    for seq in range(1, 6):
        log.append(t, seq, "chunk", {"chunk": f"c{seq}"})
    log.append(t, 6, "done", {"type": "done", "usage": {"total_tokens": 3}})
    events = log.read(t, 0, 10)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0].data == {"chunk": "c1"}
    assert events[-1].terminal and events[-1].data["usage"] == {"total_tokens": 3}


def test_function_calls_are_stored_and_read_back_like_text(log: ChunkLog) -> None:
    t = task()
    written = [
        ("chunk", {"chunk": "Let me look."}),
        ("call", {"type": "call", "id": "call_1", "name": "get_weather"}),
        ("args", {"type": "args", "delta": '{"city": "Oslo"}'}),
        ("reset", {"type": "reset", "attempt": 2}),
        ("call", {"type": "call", "id": "call_1", "name": "get_weather"}),
        ("done", {"type": "done", "finish_reason": "tool_calls"}),
    ]
    for seq, (kind, data) in enumerate(written, start=1):
        log.append(t, seq, kind, data)  # type: ignore[arg-type]
    assert [(e.kind, e.data) for e in log.read(t, 0, 10)] == written
    assert [(e.kind, e.data) for e in log.read(t, 2, 2)] == written[2:4]
    last = log.last(t)
    assert last is not None and last.kind == "done"


def test_read_after_and_limit(log: ChunkLog) -> None:
    t = task()
    for seq in range(1, 8):
        log.append(t, seq, "chunk", {"chunk": str(seq)})
    assert [e.seq for e in log.read(t, 3, 2)] == [4, 5]
    assert [e.seq for e in log.read(t, 3, 1)] == [4]
    assert log.read(t, 7, 5) == []


def test_read_of_an_unknown_task_is_empty(log: ChunkLog) -> None:
    assert log.read(task(), 0, 10) == []
    assert log.last(task()) is None


def test_read_stops_at_a_gap(log: ChunkLog, settings: Settings, clients: dict[str, Any]) -> None:
    t = task()
    log.append(t, 1, "chunk", {"chunk": "a"})
    write_behind_the_log(log, settings, clients, t, 3)  # 2 not visible yet
    assert [e.seq for e in log.read(t, 0, 10)] == [1]


def test_append_past_the_end_of_the_log_is_refused(log: ChunkLog) -> None:
    # GIVEN a log that ends at 2
    t = task()
    log.append(t, 1, "chunk", {"chunk": "a"})
    log.append(t, 2, "chunk", {"chunk": "b"})
    # WHEN a writer appends 4, THEN the log refuses: 3 is missing
    with pytest.raises(LogDiverged):
        log.append(t, 4, "chunk", {"chunk": "d"})
    # AND an append at the end still works
    log.append(t, 3, "chunk", {"chunk": "c"})
    assert [e.seq for e in log.read(t, 0, 10)] == [1, 2, 3]


def test_a_writer_never_continues_a_log_that_was_emptied_under_it(
    log: ChunkLog, settings: Settings, clients: dict[str, Any]
) -> None:
    # Regression: a Redis restart that kept nothing, while the worker's client retried
    # through the outage; the worker went on at seq 4 of a log that now began there.
    # GIVEN a writer that has written 1..3
    t = task()
    for seq in (1, 2, 3):
        log.append(t, seq, "chunk", {"chunk": str(seq)})
    # WHEN the store loses the log and the writer appends its next seq
    empty_the_log(log, settings, clients, t)
    with pytest.raises(LogDiverged):
        log.append(t, 4, "chunk", {"chunk": "4"})
    # THEN nothing was written: a new attempt starts the log over at 1
    assert log.read(t, 0, 10) == [] and log.last(t) is None
    log.append(t, 1, "reset", {"type": "reset", "attempt": 2})
    assert [e.seq for e in log.read(t, 0, 10)] == [1]


def test_append_at_an_existing_seq_conflicts(log: ChunkLog) -> None:
    t = task()
    log.append(t, 1, "chunk", {"chunk": "first"})
    with pytest.raises(SeqConflict):
        log.append(t, 1, "chunk", {"chunk": "second"})
    assert log.read(t, 0, 5)[0].data == {"chunk": "first"}


def test_last_and_read_all_past_one_page(log: ChunkLog) -> None:
    t = task()
    for seq in range(1, 231):
        log.append(t, seq, "chunk", {"chunk": "ü€" if seq % 2 else "x"})
    log.append(t, 231, "error", {"type": "error", "message": "boom"})
    events = log.read_all(t)
    assert [e.seq for e in events] == list(range(1, 232))
    assert events[0].data == {"chunk": "ü€"}
    last = log.last(t)
    assert last is not None and last.seq == 231 and last.kind == "error"


def test_ping(log: ChunkLog) -> None:
    assert log.ping()


def test_redis_events_expire_after_the_retention(redis_url: str) -> None:
    # GIVEN a log whose events are kept 60 s after the last write
    log = RedisChunkLog(redis_url, 60)
    t = task()
    log.append(t, 1, "chunk", {"chunk": "a"})
    client = redis.Redis.from_url(redis_url)
    first = client.ttl(log.key(t))
    log.append(t, 2, "chunk", {"chunk": "b"})
    # THEN the stream has that TTL, counted again from each write
    assert 0 < first <= 60 and 55 < client.ttl(log.key(t)) <= 60


def test_a_redis_reader_wakes_when_an_event_is_written(redis_url: str) -> None:
    log = RedisChunkLog(redis_url, 3600)
    t = task()
    log.append(t, 1, "chunk", {"chunk": "a"})

    async def wait_then_write() -> tuple[list[int], bool, list[int], bool]:
        # Nothing after 1 yet: the wait runs out
        quiet, woke_quiet = await log.read_wait(t, 1, 10, 0.05)
        # A writer appends 2 and 3 while the reader waits on 1
        waiting = asyncio.ensure_future(log.read_wait(t, 1, 10, 5.0))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(log.append, t, 2, "chunk", {"chunk": "b"})
        got, woke = await asyncio.wait_for(waiting, 5.0)
        return [e.seq for e in quiet], woke_quiet, [e.seq for e in got], woke

    quiet, woke_quiet, got, woke = asyncio.run(wait_then_write())
    assert (quiet, woke_quiet) == ([], False)
    assert (got, woke) == ([2], True)


def test_a_redis_reader_past_a_gap_gets_nothing_but_knows_more_exists(
    redis_url: str, settings: Settings, clients: dict[str, Any]
) -> None:
    log = RedisChunkLog(redis_url, 3600)
    t = task()
    log.append(t, 1, "chunk", {"chunk": "a"})
    write_behind_the_log(log, settings, clients, t, 3)
    events, woke = asyncio.run(log.read_wait(t, 1, 10, 1.0))
    assert (events, woke) == ([], True)
    with pytest.raises(SeqConflict):  # IDs only grow: 2 can never be written now
        log.append(t, 2, "chunk", {"chunk": "b"})
