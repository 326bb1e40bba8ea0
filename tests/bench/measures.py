"""What a benchmark level used: each function's peak memory and CPU, the AWS and Redis calls
per answer, the task rows' timings (where the time to first token goes), and summaries."""

from __future__ import annotations

import statistics
import threading
from typing import Any

import psutil

from tests.bench.clients import Answer
from tests.bench.cost import PerAnswer


class PeakMemory:
    """Each function's peak RSS while a level runs, sampled every 0.2 s: the api and stream
    apps' processes, and the largest of the worker's execution environments (each one
    Lambda instance, so each is what the worker's MemorySize must hold)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {k: v for k, v in pids.items() if k in ("api", "stream", "worker")}
        self.peak_mb: dict[str, float] = dict.fromkeys(self.pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    proc = psutil.Process(pid)
                    # the worker's poller holds no answer: its environments do
                    procs = proc.children() if name == "worker" else [proc]
                    rss = max((p.memory_info().rss for p in procs), default=0) / 2**20
                except psutil.Error:
                    continue
                self.peak_mb[name] = max(self.peak_mb[name], round(rss, 1))
            self._stop.wait(0.2)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def _ms(values: list[float], p: float) -> float | None:
    v = pct(values, p)
    return None if v is None else v * 1000


def summarize(answers: list[Answer]) -> dict[str, Any]:
    delays = [d for a in answers for d in a.delays]
    ttfts = [a.ttft for a in answers]
    posts = [a.post_ms for a in answers if a.post_ms is not None]
    return {
        "answers": len(answers),
        "whole": sum(a.ok for a in answers),
        "problems": [a.problem for a in answers if a.problem][:5],
        "post_ms_p50": pct(posts, 50),
        "post_ms_p99": pct(posts, 99),
        "ttft_ms_p50": _ms(ttfts, 50),
        "ttft_ms_p95": _ms(ttfts, 95),
        "chunk_delay_ms_p50": _ms(delays, 50),
        "chunk_delay_ms_p95": _ms(delays, 95),
        "stream_seconds": sum(a.stream_seconds for a in answers),
        # for the plots
        "ttft_ms": sorted(round(t * 1000, 2) for t in ttfts),
        "chunk_delay_ms_sample": _sample(sorted(round(d * 1000, 2) for d in delays)),
    }


SELF = "bench (clients, proxy)"


def _sample(values: list[float], n: int = 400) -> list[float]:
    """Every k-th of sorted values, the largest kept: enough for a CDF, small in the JSON."""
    if len(values) <= n:
        return values
    step = len(values) / n
    return [values[int(i * step)] for i in range(n)] + [values[-1]]


POLLER = "event source (poller)"


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each process with its children. The worker's are its execution
    environments (what Lambda bills); the poller above them stands in for the event source
    mapping (AWS's, not billed) and is counted apart."""
    out = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            kids = [] if name == SELF else proc.children(recursive=True)  # the stack is ours
            own = proc.cpu_times()
            if name == "worker":
                out[POLLER] = own.user + own.system
                times = [c.cpu_times() for c in kids]
            else:
                times = [own, *(c.cpu_times() for c in kids)]
            out[name] = sum(t.user + t.system for t in times)
        except psutil.Error:
            out[name] = 0.0
    return out


def task_rows(ddb: Any, table: str, answers: list[Answer]) -> list[dict[str, float]]:
    """The request rows' timestamps (read straight from the emulator, not counted)."""
    rows: list[dict[str, float]] = []
    for a in answers:
        if a.task_id is None:  # the request itself failed
            rows.append({})
            continue
        item = ddb.get_item(TableName=table, Key={"task_id": {"S": a.task_id}})["Item"]
        rows.append({k: float(v["N"]) for k, v in item.items() if "N" in v and k.endswith("_at")})
    return rows


def breakdown(
    answers: list[Answer], rows: list[dict[str, float]], base_ttft: float
) -> dict[str, float | None]:
    """Where the added time to first token goes (medians, ms)."""
    parts: dict[str, list[float]] = {
        "post_to_row": [],  # API function: request in, row written
        "row_to_claim": [],  # SendMessage, the event source's receive, the invocation
        "claim_to_first_write": [],  # claim, model call, first chunk write, minus the model
        "first_write_to_client": [],  # the stream's next read, SSE to the client
    }
    for a, row in zip(answers, rows, strict=True):
        if not {"created_at", "started_at", "first_token_at"} <= row.keys() or not a.first_at:
            continue
        parts["post_to_row"].append(row["created_at"] - a.sent_at)
        parts["row_to_claim"].append(row["started_at"] - row["created_at"])
        parts["claim_to_first_write"].append(row["first_token_at"] - row["started_at"] - base_ttft)
        parts["first_write_to_client"].append(a.first_at - row["first_token_at"])
    return {k: round(statistics.median(v) * 1000, 1) if v else None for k, v in parts.items()}


def usage(
    answers: list[Answer],
    rows: list[dict[str, float]],
    calls: Any,
    units: Any,
    tables: dict[str, str],
    memory: dict[str, int],
    redis_used: dict[str, int],
    snapstart: dict[str, int],
) -> PerAnswer:
    n = len(answers)
    writes = sum(u for (op, t), u in units.items() if t in tables.values() and op in _DDB_WRITES)
    reads = sum(u for (op, t), u in units.items() if t in tables.values() and op in _DDB_READS)
    sqs = sum(c for (op, _), c in calls.items() if op in _SQS_PER_ANSWER)
    worker = [r["finished_at"] - r["started_at"] for r in rows if "finished_at" in r]
    return PerAnswer(
        api_seconds=statistics.mean(a.post_ms or 0 for a in answers) / 1000,
        worker_seconds=statistics.mean(worker) if worker else 0.0,
        stream_seconds=statistics.mean(a.sse_seconds for a in answers),
        memory_mb=memory,
        snapstart_mb=snapstart,
        stream_connections=1.0,
        dynamodb_write_units=writes / n,
        dynamodb_read_units=reads / n,
        sqs_requests=sqs / n,
        bytes_out=statistics.mean(a.bytes_in for a in answers),
        # ElastiCache bills an ECPU per command per KB moved; the events are under 1 KB.
        cache_ecpus=sum(v for k, v in redis_used.items() if k not in _REDIS_FREE) / n,
    )


_REDIS_FREE = {"info", "ping", "multi", "exec", "client|setinfo", "hello"}
_DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}
_DDB_READS = {"GetItem", "BatchGetItem", "Query"}
# Requests an answer causes; empty long polls are a fixed cost per queue, not per answer.
_SQS_PER_ANSWER = {
    "SendMessage",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
}


# The calls between POST /chat and the first text at the client, one after the other:
# the new conversation's row, the request row, the enqueue, the claim, the first chunk
# write, the stream's read of it (on the Redis path, the last two go to Redis, not the
# emulator). (The event source's receive is a long poll: its time is mostly waiting, so
# left out.)
_FIRST_TOKEN_PATH = [
    ("PutItem", "sessions"),
    ("PutItem", "requests"),
    ("SendMessage", None),
    ("UpdateItem", "requests"),
    ("PutItem", "chunks"),
    ("GetItem", "chunks"),
]


def first_token_path(
    latency: dict[str, float], tables: dict[str, str], backend: str = "dynamodb"
) -> float | None:
    total = 0.0
    path = _FIRST_TOKEN_PATH if backend == "dynamodb" else _FIRST_TOKEN_PATH[:-2]
    for op, which in path:
        hits = [
            v
            for k, v in latency.items()
            if k.split(" ")[0] == op and (which is None or k.endswith(" " + tables[which]))
        ]
        if not hits:
            return None
        total += max(hits)  # SQS: the busiest queue's figure
    return round(total, 1)


PATHS = {"dynamodb": "pipeline", "redis": "pipeline_redis"}  # backend -> results key
REDIS_WRITES = ("xadd",)
REDIS_READS = ("xread", "xrange", "xrevrange")


def redis_calls(url: str | None) -> dict[str, int]:
    """The Redis server's own command counters (INFO commandstats)."""
    if url is None:
        return {}
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
