"""The benchmark's cost model and report (unit tier: no stack; the numbers are made up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bench.cost import PRICES_USD, PerAnswer, cost_per_1000
from tests.bench.report import markdown, plots, table, targets

pytestmark = pytest.mark.unit


def use(**kw: Any) -> PerAnswer:
    base: dict[str, Any] = {
        "api_seconds": 0.03,
        "worker_seconds": 4.0,
        "stream_seconds": 4.2,
        "memory_mb": {"api": 512, "worker": 512, "stream": 512},
        "stream_connections": 1.0,
        "dynamodb_write_units": 40.0,
        "dynamodb_read_units": 50.0,
        "sqs_requests": 3.0,
        "bytes_out": 10_000.0,
    }
    return PerAnswer(**{**base, **kw})


def test_cost_adds_up_from_usage_and_list_prices() -> None:
    got = cost_per_1000(use())
    items = got["items_usd_per_1000"]
    # 8.23 s at 0.5 GB = 4.115 GB-s per answer
    assert items["lambda_duration"] == pytest.approx(
        4.115 * PRICES_USD["lambda_arm64_gb_second"] * 1000, rel=1e-3
    )
    assert items["dynamodb_writes"] == pytest.approx(40 * 0.625e-6 * 1000)
    assert items["dynamodb_reads"] == pytest.approx(50 * 0.125e-6 * 1000)
    assert items["sqs"] == pytest.approx(3 * 0.4e-6 * 1000)
    assert got["usd_per_1000_answers"] == pytest.approx(sum(items.values()), abs=1e-4)
    assert got["prices_as_of"]


def test_a_longer_answer_costs_more_and_memory_scales_duration_cost() -> None:
    short, long = cost_per_1000(use()), cost_per_1000(use(worker_seconds=40, stream_seconds=40))
    assert long["usd_per_1000_answers"] > short["usd_per_1000_answers"]
    big = cost_per_1000(use(memory_mb={"api": 1024, "worker": 1024, "stream": 1024}))
    assert big["items_usd_per_1000"]["lambda_duration"] == pytest.approx(
        2 * short["items_usd_per_1000"]["lambda_duration"], rel=1e-3
    )


def test_snapstart_costs_a_cached_snapshot_a_month_and_each_restore() -> None:
    plain = cost_per_1000(use())
    snap = cost_per_1000(use(snapstart_mb={"api": 1024, "worker": 256}))
    # per answer nothing changes: the snapshot is paid by the month and by the cold start
    assert snap["usd_per_1000_answers"] == plain["usd_per_1000_answers"]
    month = 730 * 3600 * PRICES_USD["lambda_snapstart_cache_gb_second"]
    assert snap["fixed_usd_per_month"]["snapstart_cache_api"] == pytest.approx(month, abs=0.01)
    assert snap["fixed_usd_per_month"]["snapstart_cache_worker"] == pytest.approx(
        month / 4, abs=0.01
    )
    assert snap["usd_per_restore"]["worker"] == pytest.approx(
        0.25 * PRICES_USD["lambda_snapstart_restore_gb"], rel=1e-3
    )
    assert plain["fixed_usd_per_month"] == {} and plain["usd_per_restore"] == {}


def level(added: float, delay95: float) -> dict[str, Any]:
    base = {
        "answers": 4,
        "whole": 4,
        "post_ms_p50": None,
        "post_ms_p99": None,
        "ttft_ms_p50": 200.0,
        "ttft_ms_p95": 210.0,
        "chunk_delay_ms_p50": 1.0,
        "chunk_delay_ms_p95": 2.0,
        "ttft_ms": [200.0, 201.0, 205.0, 210.0],
        "chunk_delay_ms_sample": [-0.2, 1.0, 2.0],
    }
    pipe = {
        **base,
        "post_ms_p50": 20.0,
        "post_ms_p99": 30.0,
        "ttft_ms_p50": 200.0 + added,
        "ttft_ms_p95": 220.0 + added,
        "chunk_delay_ms_p50": delay95 / 2,
        "chunk_delay_ms_p95": delay95,
        "added_ttft_ms_p50": added,
        "added_ttft_breakdown_ms_p50": {"post_to_row": 5.0, "row_to_claim": 20.0},
        "chunk_log_writes_per_stream_second": 9.0,
        "chunk_log_reads_per_stream_second": 11.0,
        "cpu_seconds_per_answer_functions": 0.5,
        "cpu_seconds_per_answer_emulator": 0.6,
        "emulator_cpu_utilisation": 0.2,
        "machine_cpu_utilisation": 0.3,
        "cost": cost_per_1000(use()),
        "chunk_delay_ms_sample": [50.0, delay95],
    }
    return {"baseline": base, "pipeline": pipe}


def results() -> dict[str, Any]:
    return {
        "levels": {"1": level(40.0, 120.0), "10": level(300.0, 400.0)},
        "setup": {
            "size": "quick",
            "when": "2026-11-21 12:00:00",
            "cpus": 2,
            "python": "3.11",
            "answers": {"1": 4, "10": 20},
            "fake_model": {"tokens": 160, "tokens_per_second": 40.0, "ttft_ms": 200.0},
        },
    }


def test_report_puts_baseline_and_pipeline_side_by_side_and_marks_missed_targets(
    tmp_path: Path,
) -> None:
    r = results()
    rows = table(r).splitlines()
    assert rows[2].startswith("| 1 | baseline") and rows[3].startswith("| 1 | pipeline")
    marks = targets(r)
    line = next(x for x in marks.splitlines() if x.startswith("| added TTFT"))
    assert "40.0 ms met" in line and "300.0 ms **missed**" in line
    reads = next(x for x in marks.splitlines() if "reads per stream-second" in x)
    assert reads.count("**missed**") == 2  # 11 > 10 at both levels
    images = plots(r, tmp_path)
    assert [p.name for p in images] == ["latency_cdf.png", "delay_vs_concurrency.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in images)
    md = markdown(r, images)
    assert "## Cost model" in md and "![latency_cdf](latency_cdf.png)" in md


def test_a_second_backend_gets_its_own_rows_columns_and_fixed_costs(tmp_path: Path) -> None:
    # GIVEN a run that measured the pipeline on DynamoDB and on Redis
    r = results()
    for lvl in r["levels"].values():
        redis_use = use(cache_ecpus=40.0)
        lvl["pipeline_redis"] = {
            **lvl["pipeline"],
            "chunk_log_reads_per_stream_second": 4.0,
            "cost": cost_per_1000(redis_use),
        }
    # THEN the table has a Redis row under each DynamoDB row
    rows = table(r).splitlines()
    assert rows[3].startswith("| 1 | pipeline (DynamoDB") and rows[4].startswith(
        "| 1 | pipeline (Redis"
    )
    # and the targets a column per level and backend: reads met on Redis only
    marks = targets(r)
    assert (
        marks.splitlines()[0]
        == "| target | c=1 DynamoDB | c=1 Redis | c=10 DynamoDB | c=10 Redis |"
    )
    reads = next(x for x in marks.splitlines() if "reads per stream-second" in x)
    assert reads.count("**missed**") == 2 and reads.count("4.0  met") + reads.count("4.0 met") == 2
    # and the costs the cache's ECPUs and the Redis path's fixed monthly costs
    md = markdown(r, plots(r, tmp_path))
    assert "| elasticache ecpus |" in md
    assert "Fixed, whatever the traffic (USD a month" in md
    assert "nat gateway one zone 32.85" in md
