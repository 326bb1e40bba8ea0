"""A benchmark run as a markdown report and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The targets the design is held to (reported against, never asserted in tests).
TARGETS = [
    ("POST /chat p99", "post_ms_p99", 50.0, "ms"),
    ("added TTFT p50", "added_ttft_ms_p50", 60.0, "ms"),
    ("chunk delay p95", "chunk_delay_ms_p95", 150.0, "ms"),
    ("chunk-log writes per stream-second", "chunk_log_writes_per_stream_second", 10.0, ""),
    ("chunk-log reads per stream-second", "chunk_log_reads_per_stream_second", 10.0, ""),
]
# The pipeline's results per chunk-log backend: key in a level's results -> label.
PATHS = {
    "pipeline": "pipeline (DynamoDB chunk log)",
    "pipeline_redis": "pipeline (Redis Streams chunk log)",
}
SHORT = {"pipeline": "DynamoDB", "pipeline_redis": "Redis"}
BREAKDOWN = {
    "post_to_row": "POST in -> request row written",
    "row_to_claim": "row -> worker claims (SendMessage, receive, invoke)",
    "claim_to_first_write": "claim -> first chunk written, minus the model's own TTFT",
    "first_write_to_client": "first chunk written -> client reads it (poll, SSE)",
}


def _f(v: float | None, d: int = 1) -> str:
    return "-" if v is None else f"{v:.{d}f}"


# Where the AWS services ran (`--aws`): a results key "pipeline@localstack" is the path on
# that target; a plain key is on the default (moto).
ON = {
    "moto": "moto",
    "dynamodb-local": "moto + DynamoDB Local",
    "localstack": "LocalStack + DynamoDB Local",
    "external": "external endpoints",
}


def split(key: str) -> tuple[str, str | None]:
    path, _, target = key.partition("@")
    return path, target or None


def label(key: str) -> str:
    path, target = split(key)
    return PATHS[path] + (f" on {ON[target]}" if target else "")


def short(key: str) -> str:
    path, target = split(key)
    return SHORT[path] + (f" {target}" if target else "")


def paths(results: dict[str, Any]) -> list[str]:
    """The pipeline paths this run measured, in the order measured."""
    first = next(iter(results["levels"].values()))
    return [k for k in first if split(k)[0] in PATHS]


def _columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(level, path) pairs, one column each in the per-level tables."""
    measured = paths(results)
    return [(c, k) for c in results["levels"] for k in measured]


def _head(results: dict[str, Any], what: str) -> list[str]:
    cols = _columns(results)
    several = len(paths(results)) > 1
    names = [f"c={c} {short(k)}" if several else f"c={c}" for c, k in cols]
    return [f"| {what} | " + " | ".join(names) + " |", "|---|" + "---|" * len(cols)]


def table(results: dict[str, Any]) -> str:
    rows = [
        "| concurrency | path | whole | POST p50 / p99 ms | TTFT p50 / p95 ms "
        "| added TTFT p50 ms | chunk delay p50 / p95 ms | log writes / reads per stream-s "
        "| CPU s per answer: functions + stores | stores / machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, r in results["levels"].items():
        b = r["baseline"]
        rows.append(
            f"| {level} | baseline (straight from the model) | {b['whole']}/{b['answers']} "
            f"| - | {_f(b['ttft_ms_p50'])} / {_f(b['ttft_ms_p95'])} | - "
            f"| {_f(b['chunk_delay_ms_p50'])} / {_f(b['chunk_delay_ms_p95'])} | - | - | - |"
        )
        for key in paths(results):
            rows.append(_pipeline_row(level, label(key), r[key]))
    return "\n".join(rows)


def _pipeline_row(level: str, label: str, p: dict[str, Any]) -> str:
    return (
        f"| {level} | {label} | {p['whole']}/{p['answers']} "
        f"| {_f(p['post_ms_p50'])} / {_f(p['post_ms_p99'])} "
        f"| {_f(p['ttft_ms_p50'])} / {_f(p['ttft_ms_p95'])} "
        f"| {_f(p['added_ttft_ms_p50'])} "
        f"| {_f(p['chunk_delay_ms_p50'])} / {_f(p['chunk_delay_ms_p95'])} "
        f"| {_f(p['chunk_log_writes_per_stream_second'])} / "
        f"{_f(p['chunk_log_reads_per_stream_second'])} "
        f"| {_f(p['cpu_seconds_per_answer_functions'], 2)} + "
        f"{_f(p['cpu_seconds_per_answer_emulator'], 2)} "
        f"| {p['emulator_cpu_utilisation']:.0%} of a core / "
        f"{p['machine_cpu_utilisation']:.0%} |"
    )


def targets(results: dict[str, Any]) -> str:
    rows = _head(results, "target")
    for name, key, limit, unit in TARGETS:
        cells = []
        for c, path in _columns(results):
            v = results["levels"][c][path].get(key)
            mark = "met" if v is not None and v <= limit else "**missed**"
            cells.append(f"{_f(v)} {unit} {mark}".replace("  ", " "))
        rows.append(f"| {name} <= {limit:g} {unit} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def breakdown(results: dict[str, Any]) -> str:
    rows = _head(results, "added TTFT, median ms")
    cols = _columns(results)
    for key, text in BREAKDOWN.items():
        cells = [
            _f(results["levels"][c][path]["added_ttft_breakdown_ms_p50"].get(key))
            for c, path in cols
        ]
        rows.append(f"| {text} | " + " | ".join(cells) + " |")
    cells = [
        _f(results["levels"][c][path].get("emulator_ms_on_first_token_path")) for c, path in cols
    ]
    rows.append(
        "| of which the emulator's answer times on the path (session put, row put, send, claim; on "
        "DynamoDB also chunk put, chunk get; medians) | " + " | ".join(cells) + " |"
    )
    return "\n".join(rows)


def costs(results: dict[str, Any]) -> str:
    levels = list(results["levels"])
    cols = _columns(results)
    first = results["levels"][levels[0]][
        "pipeline" if "pipeline" in paths(results) else paths(results)[0]
    ]["cost"]
    items: list[str] = []
    for c, path in cols:
        items += [
            i for i in results["levels"][c][path]["cost"]["items_usd_per_1000"] if i not in items
        ]
    rows = _head(results, "USD per 1,000 answers")
    for item in items:
        cells = [
            _f(results["levels"][c][path]["cost"]["items_usd_per_1000"].get(item), 4)
            for c, path in cols
        ]
        rows.append(f"| {item.replace('_', ' ')} | " + " | ".join(cells) + " |")
    totals = [
        f"**{results['levels'][c][path]['cost']['usd_per_1000_answers']:.4f}**" for c, path in cols
    ]
    rows.append("| **total** | " + " | ".join(totals) + " |")
    fixed = {
        k: v
        for c, path in cols
        for k, v in results["levels"][c][path]["cost"].get("fixed_usd_per_month", {}).items()
    }
    if fixed:
        rows.append("")
        rows.append(
            "Fixed, whatever the traffic (USD a month; ElastiCache and the NAT gateway on the "
            "Redis path only): "
            + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in fixed.items())
            + f"; {sum(fixed.values()):.2f} in all."
        )
    restores = first.get("usd_per_restore") or {}
    if restores:
        rows.append(
            "A cold start of a SnapStart function adds its restore (USD): "
            + ", ".join(f"{k} {v:.5f}" for k, v in restores.items())
            + "."
        )
    use = first["per_answer"]
    rows.append("")
    rows.append(
        f"Per answer at c={levels[0]}: worker {use['worker_seconds']:.2f} s, stream "
        f"{use['stream_seconds']:.2f} s, API {use['api_seconds'] * 1000:.0f} ms "
        f"(memory: {', '.join(f'{k} {v} MB' for k, v in use['memory_mb'].items())}; arm64); "
        f"DynamoDB {use['dynamodb_write_units']:.1f} "
        f"write units and {use['dynamodb_read_units']:.1f} read units; "
        f"{use['sqs_requests']:.1f} SQS requests; {use['bytes_out'] / 1024:.1f} KiB out. "
        f"Prices: AWS list prices, {first['region']}, as of {first['prices_as_of']} "
        f"(tests/bench/cost.py). Excluded: {first['excluded']}."
    )
    return "\n".join(rows)


def _logs(setup: dict[str, Any]) -> str:
    logs = setup.get("chunk_logs") or {"pipeline": setup.get("chunk_log", "DynamoDB")}
    return "chunk logs: " + "; ".join(logs.values())


# Lambda gives a function a share of a vCPU in proportion to its memory: a whole one at
# 1,769 MB (the Lambda developer guide's "Memory and computing power").
MB_PER_VCPU = 1769


def memory(results: dict[str, Any]) -> str:
    """Each function's peak RSS and CPU under each level, beside what its MemorySize in
    template.yaml gives it: memory, and a share of a vCPU."""
    cols = _columns(results)
    if not cols or "peak_rss_mb" not in results["levels"][cols[0][0]][cols[0][1]]:
        return ""
    first = results["levels"][cols[0][0]][cols[0][1]]
    rows = _head(results, "peak RSS, MB")
    rows[0] = rows[0].rstrip(" |") + " | MemorySize MB |"
    rows[1] += "---|"
    for fn in ("api", "stream", "worker"):
        cells = [_f(results["levels"][c][k]["peak_rss_mb"].get(fn), 0) for c, k in cols]
        rows.append(f"| {fn} | " + " | ".join(cells) + f" | {first['memory_size_mb'][fn]} |")
    if "cpu_share_used" not in first:
        return "\n".join(rows)
    rows += ["", *_head(results, "CPU while billed, share of a core")]
    rows[-2] = rows[-2].rstrip(" |") + " | MemorySize buys |"
    rows[-1] += "---|"
    for fn in ("api", "stream", "worker"):
        cells = [
            f"{results['levels'][c][k]['cpu_share_used'][fn]:.1%}"
            if "cpu_share_used" in results["levels"][c][k]
            else "-"
            for c, k in cols
        ]
        buys = first["memory_size_mb"][fn] / MB_PER_VCPU
        rows.append(f"| {fn} | " + " | ".join(cells) + f" | {buys:.1%} |")
    rows.append("")
    rows.append(
        "On Lambda each environment serves one request at a time: the worker's figures are "
        "its largest environment's; the api and stream apps here serve a level's requests "
        "in one process, so their c=1 figures are the ones a Lambda environment sees."
    )
    return "\n".join(rows)


# Cold start target: each function's first answer within this many times the boto3 floor.
COLD_START_TARGET = 1.3


def cold_start(results: dict[str, Any]) -> str:
    """Each function's cold start (new process -> first answer) beside the boto3 floor."""
    cs = results.get("cold_start")
    if not cs:
        return ""
    by = cs["by_function"]
    snapstart = set(cs.get("snapstart", []))
    rows = [
        f"| cold start (median of {cs['rounds']}) | init s | first request s | first answer s "
        f"| x floor (target <= {COLD_START_TARGET:g}) | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, what in (
        ("floor", "floor: boto3 + one client + one call"),
        ("api", "api (Mangum): GET /sessions"),
        ("stream", "stream (uvicorn app): GET /stream/{id}, whole"),
        ("worker", "worker (SQS handler): one record"),
    ):
        c = by[name]
        mark = (
            ""
            if name == "floor"
            else (" met" if c["x_floor"] <= COLD_START_TARGET else " **missed**")
        )
        what += " (SnapStart)" if name in snapstart else ""
        rows.append(
            f"| {what} | {c['init_s']:.2f} | {c['after_init_s']:.2f} | "
            f"{c['first_answer_s']:.2f} | {c['x_floor']:.2f}{mark} | {c['rss_mb']:.0f} |"
        )
    if snapstart:
        floor = by["floor"]["first_answer_s"]
        rows.append("")
        rows.append(
            "Each in a fresh Python 3.12 with only the functions' locked packages "
            "(.venv-lambda). On Lambda a SnapStart function skips init at a cold start: it "
            "resumes from a snapshot taken after init and pays Lambda's restore (not "
            "measurable here) and the first request: "
            + ", ".join(
                f"{n} {by[n]['after_init_s']:.2f} s ({by[n]['after_init_s'] / floor:.2f}x floor)"
                for n in sorted(snapstart)
            )
            + "."
        )
    return "\n".join(rows)


def markdown(results: dict[str, Any], images: list[Path]) -> str:
    s = results["setup"]
    fake = s["fake_model"]
    parts = [
        f"# Benchmark: {s['size']} run, {s['when']}",
        "",
        f"Everything on one machine ({s['cpus']} CPUs, Python {s['python']}): the AWS "
        f"emulator (moto server), {_logs(s)}, the functions, the fake model "
        f"({fake['tokens']} tokens at {fake['tokens_per_second']:g} tokens/s after "
        f"{fake['ttft_ms']:g} ms) and the "
        f"clients. Answers per level: {s['answers']}. Run time {s.get('seconds', '-')} s.",
        "",
        table(results),
        "",
        "## Targets",
        "",
        targets(results),
        "",
        "## Where the added time to first token goes",
        "",
        breakdown(results),
        "",
        "## Cost model",
        "",
        costs(results),
        "",
        "## Cold starts",
        "",
        cold_start(results),
        "",
        "## Memory",
        "",
        memory(results),
        "",
    ]
    if images:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    return "\n".join(parts)


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(results["levels"])
    written: list[Path] = []

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, c in enumerate(levels):
        color = f"C{i}"
        styles = ["-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1))]
        for j, kind in enumerate(["baseline", *paths(results)]):
            style = ":" if kind == "baseline" else styles[(j - 1) % len(styles)]
            r = results["levels"][c][kind]
            for ax, key in ((ax1, "ttft_ms"), (ax2, "chunk_delay_ms_sample")):
                xs = [max(x, 0.1) for x in r[key]]  # log axis; clocks can differ by <1 ms
                if xs:
                    ys = [(k + 1) / len(xs) for k in range(len(xs))]
                    label = f"{short(kind) if kind != 'baseline' else kind}, c={c}"
                    ax.step(xs, ys, linestyle=style, color=color, where="post", label=label)
    ax1.set(title="Time to first token", xlabel="ms (log)", ylabel="fraction of answers")
    ax2.set(title="Per-chunk delay (model emitted -> client read)", xlabel="ms (log)")
    ax2.axvline(150, color="grey", lw=0.8, ls="--")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    written.append(_save(fig, out / "latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [int(c) for c in levels]

    def series(kind: str, key: str) -> list[float]:
        return [results["levels"][c][kind][key] or 0.0 for c in levels]

    for i, path in enumerate(paths(results)):
        name, color = short(path), f"C{i}"
        ax.plot(
            xs, series(path, "chunk_delay_ms_p95"), "o-", color=color, label=f"{name} delay p95"
        )
        ax.plot(
            xs, series(path, "chunk_delay_ms_p50"), "o--", color=color, label=f"{name} delay p50"
        )
        ax.plot(
            xs, series(path, "added_ttft_ms_p50"), "s:", color=color, label=f"{name} added TTFT p50"
        )
    ax.plot(
        xs, series("baseline", "chunk_delay_ms_p95"), "^:", color="grey", label="baseline delay p95"
    )
    ax.axhline(150, color="grey", lw=0.8, ls="--")
    ax.axhline(60, color="grey", lw=0.8, ls=":")
    ax.set(
        title="Delay vs concurrency (targets: delay p95 150 ms, added TTFT 60 ms)",
        xlabel="concurrent answers (log)",
        ylabel="ms (log)",
        xscale="log",
        yscale="log",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "delay_vs_concurrency.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
