"""`./run.sh bench [--quick|--full]`: the pipeline against direct streaming, side by side.

Starts its own local stack (fake OpenAI at a fixed pace), then measures in one run:
  baseline  a client streaming straight from the fake OpenAI (this machine's limit)
  pipeline  POST /chat -> SQS -> worker -> DynamoDB chunk log -> SSE
at several concurrency levels, checking every answer arrived whole (nothing lost or
repeated). Results: bench/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
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
from tests.bench.proxy import CountingProxy
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TOKENS, TPS, TTFT_MS = 160, 40.0, 200.0
FAKE = Behaviour(tokens=TOKENS, tps=TPS, ttft_ms=TTFT_MS)


@dataclass
class Answer:
    ok: bool
    ttft: float  # request sent -> first text at the client (s)
    post_ms: float | None = None
    delays: list[float] = field(default_factory=list)  # token emitted -> client read (s)
    stream_seconds: float = 0.0
    problem: str | None = None


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


def baseline(fake_url: str, n: int) -> Answer:
    message = f"bench baseline {n} {uuid.uuid4().hex[:8]}"
    client = OpenAI(base_url=f"{fake_url}/v1", api_key="sk-bench", max_retries=0)
    started, arrivals, text = time.perf_counter(), [], ""
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": message}], stream=True
    )
    first = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                text += choice.delta.content
                arrivals.append((time.time(), len(text)))
    expected = "".join(answer_tokens([{"role": "user", "content": message}], None, FAKE)[0])
    return Answer(
        ok=text == expected,
        ttft=(first or started) - started,
        delays=_delays(message, arrivals, fake_url),
        stream_seconds=arrivals[-1][0] - arrivals[0][0] if arrivals else 0.0,
        problem=None if text == expected else "text differs",
    )


def pipeline(api: str, fake_url: str, n: int) -> Answer:
    message = f"bench pipeline {n} {uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        resp = client.post(f"{api}/chat", json={"message": message})
        post_ms = (time.perf_counter() - started) * 1000
        body = resp.json()
        arrivals, text, ids, first, final = [], "", [], None, None
        with connect_sse(client, "GET", body["stream_url"]) as source:
            for sse in source.iter_sse():
                ids.append(int(sse.id))
                data = json.loads(sse.data)
                if "chunk" in data:
                    first = first or time.perf_counter()
                    text += data["chunk"]
                    arrivals.append((time.time(), len(text)))
                else:
                    final = data.get("type")
    expected = "".join(answer_tokens([{"role": "user", "content": message}], None, FAKE)[0])
    whole = text == expected and ids == list(range(1, len(ids) + 1)) and final == "done"
    return Answer(
        ok=whole,
        ttft=(first or started) - started,
        post_ms=post_ms,
        delays=_delays(message, arrivals, fake_url),
        stream_seconds=arrivals[-1][0] - arrivals[0][0] if arrivals else 0.0,
        problem=None if whole else f"final={final} ids_ok={ids == sorted(set(ids))}",
    )


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def summarize(answers: list[Answer]) -> dict[str, Any]:
    delays = [d for a in answers for d in a.delays]
    posts = [a.post_ms for a in answers if a.post_ms is not None]
    return {
        "answers": len(answers),
        "whole": sum(a.ok for a in answers),
        "problems": [a.problem for a in answers if a.problem][:5],
        "post_ms_p50": pct(posts, 50),
        "post_ms_p99": pct(posts, 99),
        "ttft_ms_p50": (pct([a.ttft for a in answers], 50) or 0) * 1000,
        "ttft_ms_p95": (pct([a.ttft for a in answers], 95) or 0) * 1000,
        "chunk_delay_ms_p50": (pct(delays, 50) or 0) * 1000,
        "chunk_delay_ms_p95": (pct(delays, 95) or 0) * 1000,
        "stream_seconds": sum(a.stream_seconds for a in answers),
    }


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            times = [proc.cpu_times(), *(c.cpu_times() for c in proc.children(recursive=True))]
            out[name] = sum(t.user + t.system for t in times)
        except psutil.Error:
            out[name] = 0.0
    return out


def run(levels: list[int], rounds: int, say: Any) -> dict[str, Any]:
    aws_port = free_port()
    with CountingProxy(aws_port) as proxy:
        opts = Options(
            stack=f"bench-{uuid.uuid4().hex[:6]}",
            ports=Ports(
                aws=aws_port,
                api=free_port(),
                stream=free_port(),
                openai=free_port(),
                frontend=free_port(),
            ),
            workers=max(levels),
            ignore_concurrency_caps=True,
            fake_tokens=TOKENS,
            fake_tps=TPS,
            fake_ttft_ms=TTFT_MS,
            function_aws_endpoint=f"http://127.0.0.1:{proxy.port}",
            state_dir=ROOT / ".localcloud" / "bench",
        )
        stack = Stack(opts, progress=say)
        with stack:
            api, fake = stack.urls["api"], stack.urls["openai"].removesuffix("/v1")
            chunks_table = stack.env["WorkerFunction"]["CHUNKS_TABLE"]
            pids = {n: p.pid for n, p in stack.procs.items()}
            say("warming up ...")
            pipeline(api, fake, -1)
            baseline(fake, -1)
            results: dict[str, Any] = {"levels": {}}
            for level in levels:
                n = level * rounds
                say(f"concurrency {level}: baseline ({n} answers) ...")
                with ThreadPoolExecutor(level) as pool:
                    base = list(pool.map(lambda i: baseline(fake, i), range(n)))
                say(f"concurrency {level}: pipeline ({n} answers) ...")
                before_ops, before_cpu = proxy.snapshot(), cpu_seconds(pids)
                with ThreadPoolExecutor(level) as pool:
                    pipe = list(pool.map(lambda i: pipeline(api, fake, i), range(n)))
                ops = proxy.snapshot() - before_ops
                cpu = {k: v - before_cpu.get(k, 0) for k, v in cpu_seconds(pids).items()}
                p, b = summarize(pipe), summarize(base)
                writes = ops[("PutItem", chunks_table)]
                reads = sum(ops[(op, chunks_table)] for op in ("GetItem", "BatchGetItem", "Query"))
                stream_s = max(p["stream_seconds"], 1e-9)
                p.update(
                    {
                        "chunk_log_writes_per_stream_second": writes / stream_s,
                        "chunk_log_reads_per_stream_second": reads / stream_s,
                        "cpu_seconds_per_answer": sum(v for k, v in cpu.items() if k != "openai")
                        / len(pipe),
                        "cpu_seconds_per_answer_by_process": {
                            k: round(v / len(pipe), 4) for k, v in cpu.items()
                        },
                        "added_ttft_ms_p50": p["ttft_ms_p50"] - b["ttft_ms_p50"],
                    }
                )
                results["levels"][str(level)] = {"baseline": b, "pipeline": p}
                say(
                    f"  whole: pipeline {p['whole']}/{p['answers']}, "
                    f"baseline {b['whole']}/{b['answers']}; TTFT p50 {p['ttft_ms_p50']:.0f} ms "
                    f"vs {b['ttft_ms_p50']:.0f} ms"
                )
    results["setup"] = {
        "fake_tokens": TOKENS,
        "fake_tps": TPS,
        "fake_ttft_ms": TTFT_MS,
        "levels": levels,
        "rounds": rounds,
        "cpus": psutil.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return results


def table(results: dict[str, Any]) -> str:
    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    rows = [
        "| concurrency | path | whole | POST p50 / p99 ms | TTFT p50 / p95 ms "
        "| added TTFT p50 ms | chunk delay p50 / p95 ms | log writes / reads per stream-s "
        "| CPU s / answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level, r in results["levels"].items():
        b, p = r["baseline"], r["pipeline"]
        rows.append(
            f"| {level} | baseline (direct from the model) | {b['whole']}/{b['answers']} "
            f"| - | {f(b['ttft_ms_p50'])} / {f(b['ttft_ms_p95'])} | - "
            f"| {f(b['chunk_delay_ms_p50'])} / {f(b['chunk_delay_ms_p95'])} | - | - |"
        )
        rows.append(
            f"| {level} | pipeline (DynamoDB chunk log) | {p['whole']}/{p['answers']} "
            f"| {f(p['post_ms_p50'])} / {f(p['post_ms_p99'])} "
            f"| {f(p['ttft_ms_p50'])} / {f(p['ttft_ms_p95'])} "
            f"| {f(p['added_ttft_ms_p50'])} "
            f"| {f(p['chunk_delay_ms_p50'])} / {f(p['chunk_delay_ms_p95'])} "
            f"| {f(p['chunk_log_writes_per_stream_second'])} / "
            f"{f(p['chunk_log_reads_per_stream_second'])} "
            f"| {f(p['cpu_seconds_per_answer'], 3)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="concurrency 1 and 10")
    size.add_argument("--full", action="store_true", help="concurrency 1, 10, 50, 100")
    args = parser.parse_args(argv)
    levels, rounds = (
        ([1, 10], 2) if args.quick else ([1, 10, 50, 100], 3) if args.full else ([1, 10, 100], 2)
    )

    def say(msg: str) -> None:
        print(msg, flush=True)  # noqa: T201 - progress is the command's output

    results = run(levels, rounds, say)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    md = table(results)
    (RESULTS / "latest.md").write_text(md + "\n")
    say("")
    say(md)
    say(f"\nwritten: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}")
    whole = all(
        r["pipeline"]["whole"] == r["pipeline"]["answers"] for r in results["levels"].values()
    )
    return 0 if whole else 1


if __name__ == "__main__":
    sys.exit(main())
