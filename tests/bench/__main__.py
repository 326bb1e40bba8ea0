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
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from localcloud.fake_openai import Behaviour
from localcloud.up import Options, Ports, Stack
from tests.bench import clients, coldstart
from tests.bench.clients import TOKENS, TPS, TTFT_MS, baseline, pipeline, warm_up
from tests.bench.cost import cost_per_1000
from tests.bench.measures import (
    PATHS,
    REDIS_READS,
    REDIS_WRITES,
    SELF,
    PeakMemory,
    breakdown,
    cpu_seconds,
    first_token_path,
    redis_calls,
    summarize,
    task_rows,
    usage,
)
from tests.bench.proxy import CountingProxy
from tests.bench.report import cold_start, markdown, memory, paths, plots, table
from tests.chaos import Chaos

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
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
NO_USER_QUOTAS = {"USER_RPM": "0", "USER_TOKENS_PER_DAY": "0", "USER_MAX_STREAMS": "0"}


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
        "fake_model": {"tokens": clients.FAKE.tokens, "tokens_per_second": TPS, "ttft_ms": TTFT_MS},
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
            fake_tokens=clients.FAKE.tokens,
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
                results["cold_start"] = coldstart.measure_all(
                    stack, users[0], say, COLD_START_ROUNDS
                )


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
        chunk_writes = sum(redis_used.get(c, 0) for c in REDIS_WRITES)
        chunk_reads = sum(redis_used.get(c, 0) for c in REDIS_READS)
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
            "emulator_ms_on_first_token_path": first_token_path(
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
    # the fake model's answers, which the clients check every answer against
    clients.FAKE = Behaviour(tokens=args.tokens, tps=TPS, ttft_ms=TTFT_MS)

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
