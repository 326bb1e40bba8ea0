"""Following a task on the Redis Streams chunk log: blocking reads woken by each write,
against a real redis-server (its own command counters tell how the stream read)."""

from __future__ import annotations

import threading
import time
import uuid

import anyio
import pytest
import redis

from llmstream.chunklog.redis import RedisChunkLog
from llmstream.follow import Pacer, follow

pytestmark = pytest.mark.integration


def calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_stream_is_woken_by_each_write_and_never_polls(redis_url: str) -> None:
    # GIVEN a worker that writes 20 chunks 20 ms apart, then done
    log = RedisChunkLog(redis_url, 3600)
    task_id = uuid.uuid4().hex
    counters = redis.Redis.from_url(redis_url, decode_responses=True)
    xreads, xranges = calls(counters, "xread"), calls(counters, "xrange")

    def write() -> None:
        time.sleep(0.1)  # the model's first token comes later than the reader
        for seq in range(1, 21):
            log.append(task_id, seq, "chunk", {"chunk": f"c{seq} "})
            time.sleep(0.02)
        log.append(task_id, 21, "done", {"type": "done"})

    writer = threading.Thread(target=write)
    writer.start()

    # WHEN a stream follows it from the start
    async def read() -> list[int]:
        pacer = Pacer(interval=0.025, max_interval=0.5, write_interval=0.1)
        return [e.seq async for e in follow(log, task_id, 0, pacer=pacer, max_seconds=30)]

    seqs = anyio.run(read)
    writer.join()

    # THEN it got every event once, in order, with one blocking read per wake-up at most:
    # no polling reads while the model had not started
    assert seqs == list(range(1, 22))
    used = calls(counters, "xread") - xreads
    assert 1 <= used <= 22
    assert calls(counters, "xrange") == xranges


def test_a_stream_ends_at_max_seconds_without_a_terminal_event(redis_url: str) -> None:
    log = RedisChunkLog(redis_url, 3600)
    task_id = uuid.uuid4().hex
    log.append(task_id, 1, "chunk", {"chunk": "only"})

    async def read() -> list[int]:
        pacer = Pacer(interval=0.025, max_interval=0.5, write_interval=0.1)
        return [e.seq async for e in follow(log, task_id, 0, pacer=pacer, max_seconds=0.3)]

    started = time.monotonic()
    assert anyio.run(read) == [1]
    assert time.monotonic() - started < 5  # the block is cut to the time left, not 10 s


def test_more_waiting_streams_than_a_default_connection_pool(redis_url: str) -> None:
    # GIVEN 150 streams of one process, each waiting in XREAD BLOCK (redis-py's pools stop
    # at 100 connections unless told otherwise)
    log = RedisChunkLog(redis_url, 3600)
    tasks = [uuid.uuid4().hex for _ in range(150)]

    async def follow_all() -> list[list[int]]:
        pacer = Pacer(interval=0.025, max_interval=0.5, write_interval=0.1)

        async def one(task_id: str) -> list[int]:
            return [e.seq async for e in follow(log, task_id, 0, pacer=pacer, max_seconds=30)]

        async def write_later() -> None:
            await anyio.sleep(0.3)
            for task_id in tasks:
                await anyio.to_thread.run_sync(log.append, task_id, 1, "done", {"type": "done"})

        results: list[list[int]] = [[] for _ in tasks]

        async def keep(i: int, task_id: str) -> None:
            results[i] = await one(task_id)

        async with anyio.create_task_group() as group:
            for i, task_id in enumerate(tasks):
                group.start_soon(keep, i, task_id)
            group.start_soon(write_later)
        return results

    # THEN every one of them gets its terminal event
    assert anyio.run(follow_all) == [[1]] * 150
