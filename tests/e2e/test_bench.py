"""`./run.sh bench` end to end, cut small: its own stack, the baseline and the pipeline on
both chunk-log backends, the report files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud.template import LocalTemplate
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.processes]


def test_bench_measures_both_paths_and_writes_its_report(tmp_path: Path) -> None:
    # WHEN a small benchmark runs (one level, two short answers)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench",
            "--levels",
            "1",
            "--answers",
            "2",
            "--tokens",
            "20",
            "--cold-starts",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    # THEN it printed the table with the baseline and the pipeline side by side
    assert "| 1 | baseline (straight from the model) | 2/2 |" in run.stdout
    assert "| 1 | pipeline (DynamoDB chunk log) | 2/2 |" in run.stdout
    assert "| 1 | pipeline (Redis Streams chunk log) | 2/2 |" in run.stdout
    # AND wrote the results, with figures taken from the run
    results = json.loads((tmp_path / "latest.json").read_text())
    pipe = results["levels"]["1"]["pipeline"]
    assert pipe["whole"] == pipe["answers"] == 2
    assert pipe["ttft_ms_p50"] > results["levels"]["1"]["baseline"]["ttft_ms_p50"] > 0
    assert pipe["chunk_log_writes_per_stream_second"] > 0
    assert pipe["cost"]["usd_per_1000_answers"] > 0
    assert any(k.startswith("PutItem ") for k in pipe["calls"])
    # the Redis path: its writes and reads counted by redis-server itself, none on DynamoDB's
    # chunks table, and the cache's fixed monthly cost stated
    on_redis = results["levels"]["1"]["pipeline_redis"]
    assert on_redis["whole"] == 2 and on_redis["redis_calls"]["xadd"] > 0
    assert on_redis["chunk_log_reads_per_stream_second"] > 0
    assert not any(k.endswith(pipe_table(pipe)) for k in on_redis["calls"])
    assert on_redis["cost"]["fixed_usd_per_month"]["nat_gateway_one_zone"] > 0
    assert "## Cost model" in (tmp_path / "latest.md").read_text()
    # each function's cold start beside the boto3 floor, and its peak memory
    cold = results["cold_start"]["by_function"]
    assert {"floor", "api", "stream", "worker"} <= set(cold)
    fns = ("floor", "api", "stream", "worker")
    assert all(cold[f]["first_answer_s"] > cold[f]["init_s"] > 0 for f in fns)
    assert all(0 < cold[f]["after_init_s"] < cold[f]["first_answer_s"] for f in fns)
    assert "x floor" in run.stdout and "peak RSS, MB" in run.stdout
    assert pipe["peak_rss_mb"]["api"] > 0 and pipe["peak_rss_mb"]["worker"] > 0
    # what each function uses beside what its MemorySize buys, and the cost model on the
    # template's MemorySize and SnapStart (not a copy of them)
    assert "MemorySize buys" in run.stdout
    assert set(pipe["cpu_share_used"]) == {"api", "worker", "stream"}
    tpl = LocalTemplate.load("bench-test")
    props = {k: tpl.props(f"{k.title()}Function") for k in ("api", "worker", "stream")}
    size = {k: p["MemorySize"] for k, p in props.items()}
    assert pipe["cost"]["per_answer"]["memory_mb"] == size
    snap = {
        k
        for k, p in props.items()
        if tpl.resolve(p.get("SnapStart", {}).get("ApplyOn")) == "PublishedVersions"
    }
    assert snap  # the template's default
    assert set(results["cold_start"]["snapstart"]) == snap
    assert {k.removeprefix("snapstart_cache_") for k in pipe["cost"]["fixed_usd_per_month"]} == snap
    for png in ("latency_cdf.png", "delay_vs_concurrency.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")


def pipe_table(pipe: dict[str, object]) -> str:
    """The chunks table's name, from the DynamoDB path's calls (PutItem <table>)."""
    calls = pipe["calls"]
    assert isinstance(calls, dict)
    return next(k.split(" ", 1)[1] for k in calls if k.startswith("PutItem ") and "Chunks" in k)
