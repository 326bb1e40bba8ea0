"""`./run.sh metrics`: the local stack's CloudWatch metrics without AWS.

The functions print their metrics as CloudWatch embedded metric format (EMF) lines
(functions/llmstream/observe.py); in the cloud CloudWatch turns those lines into metrics,
and here this module reads the same lines from the stack's logs and sums them up the way
the dashboard shows them: per metric and dimension set, the number of samples, their sum,
and p50/p95/max. The headline answers the dashboard's three questions first.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Dimensions every record has and that tell nothing apart here.
_QUIET = ("service",)
OUTCOMES = (
    "AnswersDone",
    "AnswersError",
    "AnswersTimedOut",
    "AnswersCancelled",
    "AnswersRetried",
    "AnswersDeadLettered",
    "AnswersRateLimited",
)


@dataclass
class Series:
    """One metric under one set of dimension values."""

    name: str
    unit: str
    dimensions: tuple[tuple[str, str], ...]
    values: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        if len(self.values) == 1:
            return self.values[0]
        return statistics.quantiles(self.values, n=100, method="inclusive")[int(q) - 1]


def records(log_dir: Path, since: float | None = None) -> Iterator[dict[str, Any]]:
    """Every EMF record in the stack's logs (newer than ``since``, epoch seconds)."""
    for log in sorted(log_dir.glob("*.log")):
        with log.open(errors="replace") as lines:
            for line in lines:
                if not line.startswith("{") or '"_aws"' not in line:
                    continue
                try:
                    record = json.loads(line)
                    stamp = record["_aws"]["Timestamp"] / 1000
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
                if since is None or stamp >= since:
                    yield record


def series(recs: Iterable[dict[str, Any]]) -> list[Series]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], Series] = {}
    for record in recs:
        for directive in record["_aws"].get("CloudWatchMetrics", []):
            # The finest dimension set only: the others (rollups) hold the same values.
            for dims in directive.get("Dimensions", [])[:1]:
                key_dims = tuple((d, str(record.get(d))) for d in dims if d not in _QUIET)
                for metric in directive.get("Metrics", []):
                    name = metric["Name"]
                    value = record.get(name)
                    values = value if isinstance(value, list) else [value]
                    got = out.setdefault(
                        (name, key_dims), Series(name, metric.get("Unit", ""), key_dims)
                    )
                    got.values.extend(float(v) for v in values if v is not None)
    return sorted(out.values(), key=lambda s: (s.dimensions, s.name))


def _total(all_series: list[Series], name: str) -> float:
    return sum(sum(s.values) for s in all_series if s.name == name)


def _merged(all_series: list[Series], name: str) -> Series | None:
    values = [v for s in all_series if s.name == name for v in s.values]
    return Series(name, "", (), values) if values else None


def headline(all_series: list[Series]) -> list[str]:
    """The three questions an on-call engineer asks first, from the same figures."""
    lines = []
    counts = {name: int(_total(all_series, name)) for name in OUTCOMES}
    ended = sum(counts[n] for n in ("AnswersDone", "AnswersError", "AnswersTimedOut"))
    failed = counts["AnswersError"] + counts["AnswersTimedOut"]
    rate = f"{failed / ended:.1%}" if ended else "-"
    lines.append(
        "1. Are answers failing?  "
        + ", ".join(f"{n.removeprefix('Answers').lower()} {c}" for n, c in counts.items())
        + f"; error rate {rate} (errors and timeouts of answers that ended)"
    )
    parts = []
    for name, label in (
        ("QueueTime", "in the queue"),
        ("PipelineTimeToFirstToken", "added by the pipeline before the first token"),
        ("ModelTimeToFirstToken", "the model's own first token"),
    ):
        s = _merged(all_series, name)
        if s:
            parts.append(f"{label} p50 {s.pct(50):.0f} / p95 {s.pct(95):.0f} ms")
    lines.append(
        "2. Answers slow: queue, pipeline or model?  " + ("; ".join(parts) or "no answers")
    )
    parts = []
    writes = _merged(all_series, "ChunkLogWriteLatency")
    if writes:
        parts.append(f"chunk-log writes p50 {writes.pct(50):.1f} / p95 {writes.pct(95):.1f} ms")
    opened = int(_total(all_series, "StreamsOpened"))
    parts.append(
        f"{opened} stream(s) opened, {int(_total(all_series, 'StreamResumes'))} resumed, "
        f"{int(_total(all_series, 'StreamsCutShort'))} cut short by the server"
    )
    lines.append("3. Are the chunk log and the streams healthy?  " + "; ".join(parts))
    return lines


def table(all_series: list[Series]) -> list[str]:
    rows = [("metric", "dimensions", "unit", "n", "sum", "p50", "p95", "max")]
    for s in all_series:
        dims = ", ".join(f"{k}={v}" for k, v in s.dimensions)
        rows.append(
            (
                s.name,
                dims,
                s.unit,
                str(len(s.values)),
                f"{sum(s.values):.6g}",
                f"{s.pct(50):.6g}",
                f"{s.pct(95):.6g}",
                f"{max(s.values):.6g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]


def report(log_dir: Path, since_minutes: float | None = None) -> str:
    since = time.time() - since_minutes * 60 if since_minutes else None
    all_series = [s for s in series(records(log_dir, since)) if s.values]
    if not all_series:
        return "no metrics yet: send a chat request first"
    return "\n".join([*headline(all_series), "", *table(all_series)])
