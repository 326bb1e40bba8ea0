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
from llmstream.exceptions import SeqConflict
from llmstream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["dynamodb", "redis"])
def log(request: pytest.FixtureRequest, settings: Settings, clients: dict[str, Any]) -> ChunkLog:
    factories: dict[str, Callable[[], ChunkLog]] = {
        "dynamodb": lambda: DynamoDBChunkLog(settings.chunks_table, clients["dynamodb"], 3600),
        "redis": lambda: RedisChunkLog(request.getfixturevalue("redis_url"), 3600),
    }
    return factories[request.param]()


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


def test_read_stops_at_a_gap(log: ChunkLog) -> None:
    t = task()
    log.append(t, 1, "chunk", {"chunk": "a"})
    log.append(t, 3, "chunk", {"chunk": "c"})  # 2 not visible yet
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


def test_a_redis_reader_past_a_gap_gets_nothing_but_knows_more_exists(redis_url: str) -> None:
    log = RedisChunkLog(redis_url, 3600)
    t = task()
    log.append(t, 1, "chunk", {"chunk": "a"})
    log.append(t, 3, "chunk", {"chunk": "c"})
    events, woke = asyncio.run(log.read_wait(t, 1, 10, 1.0))
    assert (events, woke) == ([], True)
    with pytest.raises(SeqConflict):  # IDs only grow: 2 can never be written now
        log.append(t, 2, "chunk", {"chunk": "b"})
