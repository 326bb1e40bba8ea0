"""`./run.sh bench [--quick|--full|--chaos]`: the pipeline against direct streaming, side by
side; or, with --chaos, how fast answers recover from killed workers.

Starts its own local stack (the fake OpenAI at a fixed pace, every function's AWS calls
through a counting proxy, users of its local pool signed in), then measures in one run,
level after level of concurrency:
  baseline  a client streaming straight from the fake OpenAI (this machine's limit)
  pipeline  POST /chat -> SQS -> worker -> chunk log -> SSE, on each chunk-log backend
            (DynamoDB, then Redis Streams: the functions restarted on the same stack)
checking that every answer arrived whole (text, dense seqs, one terminal event). Writes
bench/results/latest.json, latest.md and PNG plots; prints the table.

--chaos: a stack with the deployed heartbeat window (WORKER_HEARTBEAT_SECONDS, or
--heartbeat), 30 answers with live viewers while a running worker environment is killed
every ~2 s (tests/chaos.py); reports death -> "worker lost" / reset / done at the viewer,
p50 and p95, beside an undisturbed answer's duration. Writes bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from httpx_sse import connect_sse
from openai import OpenAI

from localcloud.fake_openai import Behaviour, answer_tokens, request_key
from localcloud.up import Options, Ports, Stack
from tests.bench import coldstart
from tests.bench.cost import PerAnswer, cost_per_1000
from tests.bench.proxy import CountingProxy
from tests.bench.report import cold_start, markdown, memory, paths, plots, table
from tests.chaos import Chaos

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
# A 4-second answer: 160 tokens at 40 tokens/s after 200 ms to the first token.
TOKENS, TPS, TTFT_MS = 160, 40.0, 200.0
FAKE = Behaviour(tokens=TOKENS, tps=TPS, ttft_ms=TTFT_MS)
SIZES: dict[str, tuple[list[int], Callable[[int], int]]] = {
    # name: (levels, answers at a level)
    "quick": ([1, 10], lambda c: max(c, 3)),
    "default": ([1, 10, 100], lambda c: max(c * 2 if c < 100 else c, 8)),
    "full": ([1, 2, 5, 10, 20, 50, 100, 200], lambda c: max(c, 8)),
}
# Worker execution environments warmed before measuring: levels above this include the
# cold starts of the environments they add (each ~120 MB here, as Lambda would scale out).
WARM_LIMIT = 20
# Cold starts of each function (and of the boto3 floor) per run; the median is reported.
COLD_START_ROUNDS = 3
# The clients are this many users of the stack's pool, answer i asked by user i % USERS.
USERS = 10
# The benchmark measures the pipeline, not the per-user quotas: they are off on its stack
# (0 = no limit), so no level's burst is refused with 429. Each quota check is a DynamoDB
# call or two per request, which the cost figures therefore leave out.
NO_USER_QUOTAS = {"USER_RPM": "0", "USER_TOKENS_PER_DAY": "0"}


@dataclass
class Answer:
    ok: bool
    ttft: float  # request sent -> first text at the client (s)
    delays: list[float] = field(default_factory=list)  # token emitted -> client read (s)
    stream_seconds: float = 0.0  # first text -> last text at the client
    problem: str | None = None
    # pipeline only
    task_id: str | None = None
    post_ms: float | None = None
    sent_at: float = 0.0  # wall clock, when the POST went out
    first_at: float = 0.0  # wall clock, when the first text arrived
    sse_seconds: float = 0.0  # the SSE response, open to close
    bytes_in: int = 0  # what the client received (POST answer + SSE)


def _delays(message: str, arrivals: list[tuple[float, int]], fake_url: str) -> list[float]:
    """Per token: when the client had it minus when the fake model emitted it."""
    messages = [{"role": "user", "content": message}]
    tokens, _ = answer_tokens(messages, None, FAKE)
    emitted = httpx.get(f"{fake_url}/fake/emissions/{request_key(messages)}").json()["times"]
    ends, total = [], 0
    for token in tokens:
        total += len(token)
        ends.append(total)
    out, i = [], 0
    for arrived, length in arrivals:
        while i < len(ends) and ends[i] <= length and i < len(emitted):
            out.append(arrived - emitted[i])
            i += 1
    return out


def _expected(message: str) -> str:
    return "".join(answer_tokens([{"role": "user", "content": message}], None, FAKE)[0])


def baseline(fake_url: str, n: int) -> Answer:
    message = f"bench baseline {n} {uuid.uuid4().hex[:8]}"
    client = OpenAI(base_url=f"{fake_url}/v1", api_key="sk-bench", max_retries=0)
    started, arrivals, text, first = time.perf_counter(), [], "", None
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": message}], stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                text += choice.delta.content
                arrivals.append((time.time(), len(text)))
    whole = text == _expected(message)
    return Answer(
        ok=whole,
        ttft=(first or started) - started,
        delays=_delays(message, arrivals, fake_url),
        stream_seconds=arrivals[-1][0] - arrivals[0][0] if arrivals else 0.0,
        problem=None if whole else "text differs",
    )


def pipeline(api: str, fake_url: str, n: int, user: dict[str, str]) -> Answer:
    """Answer ``n``, asked by the user whose Authorization header is ``user``."""
    try:
        return _pipeline(api, fake_url, n, user)
    except httpx.HTTPError as e:  # one answer's failure is a figure, not the run's end
        return Answer(ok=False, ttft=0.0, problem=f"{type(e).__name__}: {e}"[:200])


def _pipeline(api: str, fake_url: str, n: int, user: dict[str, str]) -> Answer:
    message = f"bench pipeline {n} {uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=180) as client:
        sent_at, started = time.time(), time.perf_counter()
        resp = client.post(f"{api}/chat", json={"message": message}, headers=user)
        post_ms = (time.perf_counter() - started) * 1000
        if resp.status_code != 202:
            return Answer(
                ok=False, ttft=0.0, problem=f"POST /chat {resp.status_code}: {resp.text}"[:200]
            )
        body = resp.json()
        bytes_in = len(resp.content)
        arrivals, text, first, first_at, final = [], "", None, 0.0, None
        ids: list[int] = []
        opened = time.perf_counter()
        # As EventSource does: a response that ends before the terminal event is resumed
        # with Last-Event-ID (the stream ends one when its store does not answer). The
        # stream_url carries its own short-lived token: no Authorization header.
        for _ in range(_RECONNECTS + 1):
            headers = {"Last-Event-ID": str(ids[-1])} if ids else {}
            with connect_sse(client, "GET", body["stream_url"], headers=headers) as source:
                for sse in source.iter_sse():
                    if not sse.data:  # a keep-alive comment (httpx-sse hands it over)
                        bytes_in += 8
                        continue
                    bytes_in += len(sse.id) + len(sse.data) + 12  # "id: ", "data: ", newlines
                    if sse.event != "message":  # `event: status` (worker lost): no seq
                        continue
                    ids.append(int(sse.id))
                    data = json.loads(sse.data)
                    if data.get("type") == "reset":  # a new attempt starts the text over
                        text, arrivals = "", []
                        continue
                    if "chunk" in data:
                        if first is None:
                            first, first_at = time.perf_counter(), time.time()
                        text += data["chunk"]
                        arrivals.append((time.time(), len(text)))
                    else:
                        final = data.get("type")
            if final is not None:
                break
        sse_seconds = time.perf_counter() - opened
    whole = text == _expected(message) and ids == list(range(1, len(ids) + 1)) and final == "done"
    return Answer(
        ok=whole,
        ttft=(first or started) - started,
        delays=_delays(message, arrivals, fake_url),
        stream_seconds=arrivals[-1][0] - arrivals[0][0] if arrivals else 0.0,
        problem=None if whole else f"final={final} seqs_dense={ids == sorted(set(ids))}",
        task_id=body["task_id"],
        post_ms=post_ms,
        sent_at=sent_at,
        first_at=first_at,
        sse_seconds=sse_seconds,
        bytes_in=bytes_in,
    )


_RECONNECTS = 3


def warm_up(api: str, fake: str, k: int, user: dict[str, str]) -> None:
    """A short answer each way (not measured): connections, caches, imports, the issuer's
    keys."""
    # two seconds long, so concurrent warm-ups overlap and each takes an environment
    message = f"warm up {k} [[fake tokens=40 tps=20]]"
    client = OpenAI(base_url=f"{fake}/v1", api_key="sk-bench", max_retries=0)
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": message}], stream=True
    ):
        pass
    with httpx.Client(timeout=60) as http:
        resp = http.post(f"{api}/chat", json={"message": message}, headers=user)
        resp.raise_for_status()
        body = resp.json()
        with connect_sse(http, "GET", body["stream_url"]) as source:
            for _ in source.iter_sse():
                pass


def finished_answer(api: str, user: dict[str, str]) -> dict[str, str]:
    """A short answer, followed to its end: its POST /chat body (task id, stream URL)."""
    with httpx.Client(timeout=60) as http:
        resp = http.post(f"{api}/chat", json={"message": "cold [[fake tokens=3]]"}, headers=user)
        resp.raise_for_status()
        body: dict[str, str] = resp.json()
        with connect_sse(http, "GET", body["stream_url"]) as source:
            for _ in source.iter_sse():
                pass
    return body


def cold_starts(stack: Stack, user: dict[str, str], say: Any, rounds: int) -> dict[str, Any]:
    """Each function's cold start beside the boto3 floor (tests/bench/coldstart.py)."""
    say(f"cold starts: api, stream, worker and the boto3 floor, {rounds} each ...")
    body = finished_answer(stack.urls["api"], user)
    url = httpx.URL(body["stream_url"])
    worker = stack.env["WorkerFunction"]
    # The worker's record comes from a queue no poller reads, standing in for its low
    # priority queue, so its heartbeat has a real receipt handle to extend.
    sqs = stack.client("sqs")
    queue = sqs.create_queue(QueueName=f"{stack.opts.stack}-coldstart")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]

    def worker_record() -> dict[str, Any]:
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"task_id": body["task_id"]}))
        got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5)["Messages"][0]
        return {
            "task_id": body["task_id"],
            "queue_arn": queue_arn,
            "receipt_handle": got["ReceiptHandle"],
        }

    envs = {
        "floor": worker,
        "api": stack.env["ApiFunction"],
        "stream": stack.env["StreamFunction"],
        "worker": {**worker, "QUEUE_URL_LOW": queue},
    }
    args = {
        "floor": lambda: {"table": worker["REQUESTS_TABLE"]},
        "api": lambda: {"auth": user["Authorization"]},
        "stream": lambda: {"path": url.path, "query": url.query.decode()},
        "worker": worker_record,
    }
    assert stack.template is not None
    fns = stack.template.functions()
    return {
        **coldstart.measure(envs, args, rounds),
        "snapstart": [
            k
            for k, logical in (
                ("api", "ApiFunction"),
                ("stream", "StreamFunction"),
                ("worker", "WorkerFunction"),
            )
            if fns[logical].snapstart
        ],
    }


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


def _first_token_path(
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
_REDIS_WRITES = ("xadd",)
_REDIS_READS = ("xread", "xrange", "xrevrange")


def redis_calls(url: str | None) -> dict[str, int]:
    """The Redis server's own command counters (INFO commandstats)."""
    if url is None:
        return {}
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def run(
    size: str,
    say: Any,
    levels: list[int] | None = None,
    answers: int | None = None,
    backends: list[str] | None = None,
    aws_targets: list[str] | None = None,
) -> dict[str, Any]:
    """Measure at each level; ``levels`` and ``answers`` (per level) override the size's.
    The baseline runs once per level; the pipeline once per chunk-log backend, the stack's
    functions restarted on the next backend in between (same emulator, model, machine),
    and all of it once per AWS target (``aws_targets``: a stack of its own each)."""
    levels = levels or SIZES[size][0]
    backends = backends or list(PATHS)
    answers_at = SIZES[size][1] if answers is None else (lambda _c: answers)
    results: dict[str, Any] = {"levels": {str(c): {} for c in levels}}
    for t, target in enumerate(aws_targets or ["moto"]):
        _run_on(target, t == 0, levels, backends, answers_at, say, results)
    results["setup"] = {
        "size": size,
        "levels": levels,
        "answers": {str(c): answers_at(c) for c in levels},
        "fake_model": {"tokens": FAKE.tokens, "tokens_per_second": TPS, "ttft_ms": TTFT_MS},
        "chunk_logs": {
            PATHS[b]: {
                "dynamodb": "DynamoDB (moto server)",
                "redis": "Redis Streams (redis-server " + _redis_version() + ")",
            }[b]
            for b in backends
        },
        "aws_targets": aws_targets or ["moto"],
        "cpus": psutil.cpu_count(),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return results


def _run_on(
    target: str,
    first: bool,
    levels: list[int],
    backends: list[str],
    answers_at: Callable[[int], int],
    say: Any,
    results: dict[str, Any],
) -> None:
    """Every level on a stack whose AWS services run on ``target``; the baseline only on
    the ``first`` target."""
    ports = Ports.free()
    with CountingProxy(ports.aws) as proxy:
        # The functions reach every store through the proxy (DynamoDB Local apart from the
        # rest on targets that have it), so their calls are counted on every target.
        function_env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
        if target in ("dynamodb-local", "localstack"):
            function_env["AWS_ENDPOINT_URL_DYNAMODB"] = (
                f"http://127.0.0.1:{proxy.add(ports.dynamodb)}"
            )
        opts = Options(
            stack=f"bench-{uuid.uuid4().hex[:6]}",
            ports=ports,
            aws=target,
            workers=max(levels),
            ignore_concurrency_caps=True,
            fake_tokens=FAKE.tokens,
            fake_tps=TPS,
            fake_ttft_ms=TTFT_MS,
            function_endpoints=function_env,
            state_dir=ROOT / ".localcloud" / "bench",
            chunk_log=backends[0],
            extra_env=dict(NO_USER_QUOTAS),
        )
        stack = Stack(opts, progress=lambda m: say(f"  {m}"))
        say(
            f"starting a local stack on {target} (workers: {max(levels)}, "
            f"chunk log: {backends[0]}) ..."
        )
        with stack:
            fake = stack.urls["openai"].removesuffix("/v1")
            env = stack.env["WorkerFunction"]
            tables = {
                "chunks": env["CHUNKS_TABLE"],
                "requests": env["REQUESTS_TABLE"],
                "sessions": env["SESSIONS_TABLE"],  # each answer here starts a conversation
            }
            assert stack.template is not None
            fns = stack.template.functions()
            by_name = {
                "api": fns["ApiFunction"],
                "worker": fns["WorkerFunction"],
                "stream": fns["StreamFunction"],
            }
            memory = {k: f.memory for k, f in by_name.items()}
            snapstart = {k: f.memory for k, f in by_name.items() if f.snapstart}
            ddb = stack.client("dynamodb")
            for i, backend in enumerate(backends):
                if i:
                    say(f"restarting the functions on the {backend} chunk log ...")
                    stack.use_chunk_log(backend)
                api = stack.urls["api"]
                pids = {n: p.pid for n, p in stack.procs.items()}
                pids[SELF] = psutil.Process().pid
                # Signed in afresh for each backend (access tokens last an hour).
                users = [stack.ensure_user(f"bench-{u}").headers for u in range(USERS)]
                # As many overlapping answers as the levels run at once (up to WARM_LIMIT):
                # each worker execution environment is a process of its own with a cold
                # start, as on Lambda; a level measures warm ones (connections, caches).
                warm = min(max(levels), WARM_LIMIT)
                say(f"warming up ({warm} worker environments) ...")
                with ThreadPoolExecutor(warm) as pool:
                    list(
                        pool.map(
                            lambda k, api=api, users=users: warm_up(
                                api, fake, k, users[k % len(users)]
                            ),
                            range(warm),
                        )
                    )
                for level in levels:
                    n = answers_at(level)
                    out = results["levels"][str(level)]
                    if i == 0 and first:
                        say(f"concurrency {level}: baseline, {n} answers ...")
                        with ThreadPoolExecutor(level) as pool:
                            base = list(pool.map(lambda k: baseline(fake, k), range(n)))
                        out["baseline"] = summarize(base)
                    key = PATHS[backend] if target == "moto" else f"{PATHS[backend]}@{target}"
                    say(f"concurrency {level}: pipeline on {backend} ({target}), {n} answers ...")
                    out[key] = measure(
                        backend,
                        level,
                        n,
                        api,
                        users,
                        fake,
                        stack.urls.get("redis"),
                        proxy,
                        pids,
                        ddb,
                        tables,
                        memory,
                        snapstart,
                        out["baseline"],
                    )
                    p, b = out[key], out["baseline"]
                    say(
                        f"  whole: pipeline {p['whole']}/{n}, baseline {b['whole']}/{n}; "
                        f"TTFT p50 {p['ttft_ms_p50']:.0f} ms vs {b['ttft_ms_p50']:.0f} ms; "
                        f"chunk delay p95 {p['chunk_delay_ms_p95']:.0f} ms; "
                        f"stores busy {p['emulator_cpu_utilisation']:.0%} of a core, "
                        f"machine {p['machine_cpu_utilisation']:.0%}"
                    )
            if first:
                # After the levels: the machine as quiet as the run leaves it, the stack up.
                results["cold_start"] = cold_starts(stack, users[0], say, COLD_START_ROUNDS)


def _redis_version() -> str:
    import shutil
    import subprocess

    server = shutil.which("redis-server")
    if server is None:
        return "?"
    out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


def measure(
    backend: str,
    level: int,
    n: int,
    api: str,
    users: list[dict[str, str]],
    fake: str,
    redis_url: str | None,
    proxy: CountingProxy,
    pids: dict[str, int],
    ddb: Any,
    tables: dict[str, str],
    memory: dict[str, int],
    snapstart: dict[str, int],
    b: dict[str, Any],
) -> dict[str, Any]:
    """``n`` answers through the pipeline, ``level`` at a time, asked by ``users`` (their
    Authorization headers) in turn, and what they used."""
    redis_url = redis_url if backend == "redis" else None
    (calls0, units0), cpu0, wall0 = proxy.snapshot(), cpu_seconds(pids), time.time()
    r0 = redis_calls(redis_url)
    with PeakMemory(pids) as memory_used, ThreadPoolExecutor(level) as pool:
        pipe = list(pool.map(lambda i: pipeline(api, fake, i, users[i % len(users)]), range(n)))
    wall = time.time() - wall0
    calls1, units1 = proxy.snapshot()
    calls, units = calls1 - calls0, units1 - units0
    r1 = redis_calls(redis_url)
    redis_used = {k: v - r0.get(k, 0) for k, v in r1.items() if v - r0.get(k, 0)}
    cpu = {k: v - cpu0.get(k, 0) for k, v in cpu_seconds(pids).items()}
    rows = task_rows(ddb, tables["requests"], pipe)
    p = summarize(pipe)
    stream_s = max(p["stream_seconds"], 1e-9)
    reads_by = ("GetItem", "BatchGetItem", "Query")
    if backend == "redis":
        chunk_writes = sum(redis_used.get(c, 0) for c in _REDIS_WRITES)
        chunk_reads = sum(redis_used.get(c, 0) for c in _REDIS_READS)
        chunk_read_units = chunk_reads
    else:
        chunk_writes = calls[("PutItem", tables["chunks"])]
        chunk_reads = sum(calls[(op, tables["chunks"])] for op in reads_by)
        chunk_read_units = sum(units[(op, tables["chunks"])] for op in reads_by)
    stores = sum(cpu.get(k, 0.0) for k in ("aws", "moto", "dynamodb", "redis"))
    functions_cpu = sum(cpu.get(k, 0.0) for k in ("api", "worker", "stream"))
    per_answer = usage(pipe, rows, calls, units, tables, memory, redis_used, snapstart)
    p.update(
        {
            "chunk_log": backend,
            "added_ttft_ms_p50": (p["ttft_ms_p50"] or 0) - (b["ttft_ms_p50"] or 0),
            "added_ttft_breakdown_ms_p50": breakdown(pipe, rows, (b["ttft_ms_p50"] or 0) / 1000),
            "chunk_log_writes_per_stream_second": chunk_writes / stream_s,
            "chunk_log_reads_per_stream_second": chunk_reads / stream_s,
            "chunk_log_read_units_per_stream_second": chunk_read_units / stream_s,
            "cpu_seconds_per_answer_functions": functions_cpu / n,
            # the stores: the AWS emulator, and redis-server on the Redis path
            "cpu_seconds_per_answer_emulator": stores / n,
            "cpu_seconds_per_answer_by_process": {k: round(v / n, 4) for k, v in cpu.items()},
            "peak_rss_mb": memory_used.peak_mb,
            # Each function's CPU while it is billed, as a share of one core: what its
            # MemorySize must buy (Lambda gives a function MemorySize / 1769 of a vCPU).
            "cpu_share_used": {
                fn: round(cpu.get(fn, 0.0) / n / max(getattr(per_answer, f"{fn}_seconds"), 1e-9), 4)
                for fn in ("api", "worker", "stream")
            },
            "memory_size_mb": memory,  # the template's MemorySize of each
            "emulator_cpu_utilisation": stores / wall,
            # every process of the run, the benchmark's own clients included
            "machine_cpu_utilisation": sum(cpu.values()) / wall / (psutil.cpu_count() or 1),
            "calls": {f"{op} {name}": c for (op, name), c in sorted(calls.items())},
            "redis_calls": redis_used,
            "emulator_latency_ms_p50": proxy.latency_ms(since=calls0),
            "emulator_ms_on_first_token_path": _first_token_path(
                proxy.latency_ms(since=calls0), tables, backend
            ),
            "cost": cost_per_1000(per_answer),
        }
    )
    return p


def chaos(say: Any, heartbeat: int | None, out: Path) -> int:
    """`--chaos`: recovery from killed worker environments, on a stack of its own."""
    opts = Options(
        stack=f"bench-chaos-{uuid.uuid4().hex[:6]}",
        ports=Ports.free(),
        workers=4,
        state_dir=ROOT / ".localcloud" / "bench-chaos",
        extra_env={
            **NO_USER_QUOTAS,
            **({"WORKER_HEARTBEAT_SECONDS": str(heartbeat)} if heartbeat else {}),
        },
    )
    stack = Stack(opts, progress=lambda m: say(f"  {m}"))
    say("starting a local stack (4 worker environments) ...")
    with stack:
        users = [stack.ensure_user(f"bench-chaos-{u}").headers for u in range(5)]
        run = Chaos(answers=30, tokens=240, tps=40)
        say(
            f"{run.answers} answers ({run.tokens} tokens at {run.tps}/s) with a viewer each; "
            f"killing a running worker environment every {run.every:.0f} s ..."
        )
        report = run.run(stack, users)
        stack.check()
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(report, indent=2))
    rec = report["recovery_seconds"]
    rows = [
        "| | p50 (s) | p95 (s) |",
        "|---|---|---|",
        *(
            f"| {label} | {rec[key]['p50']} | {rec[key]['p95']} |"
            for key, label in (
                ("death_to_worker_lost_seen", "death -> viewer told 'worker lost'"),
                ("death_to_reset_seen", "death -> new attempt's reset at the viewer"),
                ("death_to_done_seen", "death -> answer done at the viewer"),
                ("undisturbed_answer", "an answer nobody killed (first event -> done)"),
            )
        ),
    ]
    print(  # noqa: T201 - the command's result
        f"\nheartbeat window {report['heartbeat_seconds']} s; answers {report['answers']}, "
        f"kills {report['kills']}: done {report['done']}, lost {report['lost']}, "
        f"duplicated {report['duplicated']}, hung {report['hung']}, "
        f"retried {report['retried']}\n\n" + "\n".join(rows) + "\n",
        flush=True,
    )
    say(f"written: {out / 'chaos.json'}")
    ok = report["done"] == report["answers"] and report["duplicated"] == 0
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="concurrency 1 and 10 (~2 min)")
    size.add_argument("--full", action="store_true", help="concurrency 1 to 200")
    size.add_argument("--chaos", action="store_true", help="recovery from killed workers (~2 min)")
    parser.add_argument(
        "--heartbeat", type=int, help="--chaos: the worker's heartbeat window in seconds"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--levels", type=lambda v: [int(c) for c in v.split(",")], help="e.g. 1,5,20"
    )
    parser.add_argument("--answers", type=int, help="answers per level")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens per answer")
    parser.add_argument(
        "--backends",
        type=lambda v: v.split(","),
        default=list(PATHS),
        help="chunk logs to measure, e.g. dynamodb or dynamodb,redis (the default)",
    )
    parser.add_argument(
        "--aws",
        type=lambda v: v.split(","),
        default=["moto"],
        help="where the AWS services run, side by side: e.g. moto,localstack "
        "(moto, dynamodb-local, localstack)",
    )
    parser.add_argument(
        "--cold-starts", type=int, default=3, help="cold starts of each function (median)"
    )
    args = parser.parse_args(argv)
    global COLD_START_ROUNDS
    COLD_START_ROUNDS = max(1, args.cold_starts)
    bad = set(args.aws) - {"moto", "dynamodb-local", "localstack"}
    if bad:
        parser.error(f"unknown --aws target(s) {', '.join(sorted(bad))}")
    unknown = set(args.backends) - set(PATHS)
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}: dynamodb, redis")
    name = "quick" if args.quick else "full" if args.full else "default"
    global FAKE  # the fake model's answers, which the clients check every answer against
    FAKE = Behaviour(tokens=args.tokens, tps=TPS, ttft_ms=TTFT_MS)

    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {msg}", flush=True)  # noqa: T201

    if args.chaos:
        return chaos(say, args.heartbeat, args.out)
    results = run(name, say, args.levels, args.answers, args.backends, args.aws)
    results["setup"]["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2))
    images = plots(results, args.out)
    (args.out / "latest.md").write_text(markdown(results, images))
    print(  # noqa: T201 - the command's result
        f"\n{table(results)}\n\n{cold_start(results)}\n\n{memory(results)}\n", flush=True
    )
    written = [args.out / "latest.json", args.out / "latest.md", *images]
    say(f"written: {', '.join(str(p) for p in written)}")
    whole = all(
        r[key]["whole"] == r[key]["answers"]
        for r in results["levels"].values()
        for key in paths(results)
    )
    return 0 if whole else 1


if __name__ == "__main__":
    sys.exit(main())
