"""Chunk log on Redis Streams (ElastiCache for Redis OSS or Valkey): one stream per task.

Stream ``<prefix>:{<task_id>}:chunks``; event ``seq`` is entry ID ``0-<seq>``, so a range
read by seq is an XRANGE. An append is one small script, so the check and the write are
one atomic step on the server: seq n is written only if the stream's newest entry is
n-1 (a stream that does not exist counts as 0). A second writer at an existing seq gets
SeqConflict; a writer whose predecessor is missing gets LogDiverged. The second case is
what a Redis restart without persistence looks like to a writer whose client retried
through the outage: before this check it appended seq k+1 to a stream that had started
over empty, and a viewer reading from 0 found the answer's beginning missing (the store
outage e2e test, 5 failures in 5 fresh-clone runs). The key expires
``retention_seconds`` after the last append (EXPIRE in the same script).

Unlike DynamoDB, Redis can push: ``read_wait`` blocks in XREAD BLOCK on the event loop
(redis.asyncio), so a stream wakes up when the worker writes instead of polling.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar, cast

import redis
import redis.asyncio
from redis.exceptions import RedisError

from llmstream.chunklog.base import ChunkLog
from llmstream.exceptions import LogDiverged, SeqConflict, StoreUnavailable
from llmstream.models import Event, EventKind

# A blocked XREAD answers within its BLOCK time; the socket waits a little longer than the
# longest block before it calls the connection dead.
_MAX_BLOCK_SECONDS = 10.0
_MAX_CONNECTIONS = 4096

# KEYS[1] the stream; ARGV seq, kind, data, at, ttl. Returns "ok", "exists" or "gap:<top>".
_APPEND = """
local seq = tonumber(ARGV[1])
local top = 0
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then top = tonumber(string.match(newest[1][1], '%-(%d+)$')) end
if top >= seq then return 'exists' end
if top ~= seq - 1 then return 'gap:' .. top end
redis.call('XADD', KEYS[1], '0-' .. seq, 'kind', ARGV[2], 'data', ARGV[3], 'at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 'ok'
"""


class RedisChunkLog(ChunkLog):
    pushes: ClassVar[bool] = True

    def __init__(self, url: str, retention_seconds: int, prefix: str = "llmstream") -> None:
        self._url = url
        self._retention = retention_seconds
        self._prefix = prefix
        self._client = redis.Redis.from_url(
            url,
            max_connections=_MAX_CONNECTIONS,  # one per thread writing at once (local pollers)
            decode_responses=True,
            socket_connect_timeout=3,
            socket_timeout=10,
            health_check_interval=30,
        )
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None
        # EVALSHA, loading the script again after a server restart (NOSCRIPT).
        self._append = self._client.register_script(_APPEND)

    def key(self, task_id: str) -> str:
        # The braces are a hash tag: in cluster mode (ElastiCache Serverless) everything of
        # one task lives in one slot.
        return f"{self._prefix}:{{{task_id}}}:chunks"

    def append(self, task_id: str, seq: int, kind: EventKind, data: dict[str, Any]) -> None:
        if seq < 1:
            raise ValueError(f"seq starts at 1, got {seq}")
        data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        at = f"{time.time():.3f}"  # when it was written (DynamoDB backend: the same)
        try:
            answer = str(
                self._append(
                    keys=[self.key(task_id)], args=[seq, kind, data_json, at, self._retention]
                )
            )
        except RedisError as e:
            raise StoreUnavailable(str(e)) from e
        if answer == "exists":
            raise SeqConflict(f"task {task_id}: seq {seq} already written")
        if answer.startswith("gap:"):
            raise LogDiverged(
                f"task {task_id}: cannot write seq {seq}, the log ends at {answer[4:]}"
            )

    def read(self, task_id: str, after: int, limit: int) -> list[Event]:
        try:
            entries = self._client.xrange(
                self.key(task_id), min=f"0-{after + 1}", max="+", count=max(1, limit)
            )
        except RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return _dense(cast(list[Any], entries), after)

    def last(self, task_id: str) -> Event | None:
        try:
            entries = cast(list[Any], self._client.xrevrange(self.key(task_id), count=1))
        except RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return _event(*entries[0]) if entries else None

    async def read_wait(
        self, task_id: str, after: int, limit: int, timeout: float
    ) -> tuple[list[Event], bool]:
        block_ms = max(1, int(min(timeout, _MAX_BLOCK_SECONDS) * 1000))
        try:
            got: Any = await self._async_client().xread(
                {self.key(task_id): f"0-{after}"}, count=max(1, limit), block=block_ms
            )
        except RedisError as e:
            raise StoreUnavailable(str(e)) from e
        if not got:
            return [], False  # the block ran out: nothing new
        # RESP2 answers [[key, entries]], RESP3 {key: [entries]}.
        entries = next(iter(got.values()))[0] if isinstance(got, dict) else got[0][1]
        return _dense(entries, after), True

    def _async_client(self) -> redis.asyncio.Redis:
        # One client per event loop: its connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = redis.asyncio.Redis.from_url(
                self._url,
                # A waiting stream holds a connection for its XREAD BLOCK: in Lambda one
                # stream per instance, but a process serving many (the local stack) needs
                # one each; redis-py's default pool stops at 100.
                max_connections=_MAX_CONNECTIONS,
                decode_responses=True,
                socket_connect_timeout=3,
                socket_timeout=_MAX_BLOCK_SECONDS + 5,
                health_check_interval=30,
            )
            self._async = (loop, client)
        return self._async[1]

    def delete(self, task_id: str) -> None:
        try:
            self._client.delete(self.key(task_id))
        except RedisError as e:
            raise StoreUnavailable(str(e)) from e

    def ping(self) -> str:
        try:
            self._client.ping()
        except RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return "PONG"


def _dense(entries: list[Any], after: int) -> list[Event]:
    events: list[Event] = []
    for entry_id, fields in entries:
        event = _event(entry_id, fields)
        if event.seq != after + len(events) + 1:
            break  # a gap: later seqs are not readable yet
        events.append(event)
    return events


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(
        seq=int(entry_id.split("-", 1)[1]),
        kind=cast(EventKind, fields["kind"]),
        data=json.loads(fields["data"]),
        written_at=float(fields["at"]) if "at" in fields else None,
    )
