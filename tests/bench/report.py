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
BREAKDOWN = {
    "post_to_row": "POST in -> request row written",
    "row_to_claim": "row -> worker claims (SendMessage, receive, invoke)",
    "claim_to_first_write": "claim -> first chunk written, minus the model's own TTFT",
    "first_write_to_client": "first chunk written -> client reads it (poll, SSE)",
}


def _f(v: float | None, d: int = 1) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def table(results: dict[str, Any]) -> str:
    rows = [
        "| concurrency | path | whole | POST p50 / p99 ms | TTFT p50 / p95 ms "
        "| added TTFT p50 ms | chunk delay p50 / p95 ms | log writes / reads per stream-s "
        "| CPU s per answer: functions + emulator | emulator / machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, r in results["levels"].items():
        b, p = r["baseline"], r["pipeline"]
        rows.append(
            f"| {level} | baseline (straight from the model) | {b['whole']}/{b['answers']} "
            f"| - | {_f(b['ttft_ms_p50'])} / {_f(b['ttft_ms_p95'])} | - "
            f"| {_f(b['chunk_delay_ms_p50'])} / {_f(b['chunk_delay_ms_p95'])} | - | - | - |"
        )
        rows.append(
            f"| {level} | pipeline (DynamoDB chunk log) | {p['whole']}/{p['answers']} "
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
    return "\n".join(rows)


def targets(results: dict[str, Any]) -> str:
    levels = list(results["levels"])
    head = "| target | " + " | ".join(f"c={c}" for c in levels) + " |"
    rows = [head, "|---|" + "---|" * len(levels)]
    for name, key, limit, unit in TARGETS:
        cells = []
        for c in levels:
            v = results["levels"][c]["pipeline"].get(key)
            mark = "met" if v is not None and v <= limit else "**missed**"
            cells.append(f"{_f(v)} {unit} {mark}".replace("  ", " "))
        rows.append(f"| {name} <= {limit:g} {unit} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def breakdown(results: dict[str, Any]) -> str:
    levels = list(results["levels"])
    rows = [
        "| added TTFT, median ms | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for key, text in BREAKDOWN.items():
        cells = [
            _f(results["levels"][c]["pipeline"]["added_ttft_breakdown_ms_p50"].get(key))
            for c in levels
        ]
        rows.append(f"| {text} | " + " | ".join(cells) + " |")
    cells = [
        _f(results["levels"][c]["pipeline"].get("emulator_ms_on_first_token_path")) for c in levels
    ]
    rows.append(
        "| of which the emulator's answer times on the path (row put, send, claim, "
        "chunk put, chunk get; medians) | " + " | ".join(cells) + " |"
    )
    return "\n".join(rows)


def costs(results: dict[str, Any]) -> str:
    levels = list(results["levels"])
    first = results["levels"][levels[0]]["pipeline"]["cost"]
    items = list(first["items_usd_per_1000"])
    rows = [
        "| USD per 1,000 answers | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for item in items:
        cells = [
            f"{results['levels'][c]['pipeline']['cost']['items_usd_per_1000'][item]:.4f}"
            for c in levels
        ]
        rows.append(f"| {item.replace('_', ' ')} | " + " | ".join(cells) + " |")
    totals = [
        f"**{results['levels'][c]['pipeline']['cost']['usd_per_1000_answers']:.4f}**"
        for c in levels
    ]
    rows.append("| **total** | " + " | ".join(totals) + " |")
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


def markdown(results: dict[str, Any], images: list[Path]) -> str:
    s = results["setup"]
    fake = s["fake_model"]
    parts = [
        f"# Benchmark: {s['size']} run, {s['when']}",
        "",
        f"Everything on one machine ({s['cpus']} CPUs, Python {s['python']}): the AWS "
        f"emulator (moto server), the functions, the fake model ({fake['tokens']} tokens at "
        f"{fake['tokens_per_second']:g} tokens/s after {fake['ttft_ms']:g} ms) and the "
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
        for kind, style in (("baseline", ":"), ("pipeline", "-")):
            r = results["levels"][c][kind]
            for ax, key in ((ax1, "ttft_ms"), (ax2, "chunk_delay_ms_sample")):
                xs = [max(x, 0.1) for x in r[key]]  # log axis; clocks can differ by <1 ms
                if xs:
                    ys = [(k + 1) / len(xs) for k in range(len(xs))]
                    ax.step(xs, ys, style, color=color, where="post", label=f"{kind}, c={c}")
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

    ax.plot(xs, series("pipeline", "chunk_delay_ms_p95"), "o-", label="pipeline delay p95")
    ax.plot(xs, series("pipeline", "chunk_delay_ms_p50"), "o--", label="pipeline delay p50")
    ax.plot(xs, series("pipeline", "added_ttft_ms_p50"), "s-", label="added TTFT p50")
    ax.plot(xs, series("baseline", "chunk_delay_ms_p95"), "^:", label="baseline delay p95")
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
