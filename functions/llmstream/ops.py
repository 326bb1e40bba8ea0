"""The api function's operational routes: /health/full, /stats, /test."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from llmstream.deps import Deps
from llmstream.exceptions import StoreUnavailable
from llmstream.models import (
    Check,
    HealthFull,
    LatencyStats,
    ModelTest,
    QueueCheck,
    QueueDepth,
    Stats,
)
from llmstream.settings import Settings


def queue_urls(settings: Settings) -> dict[str, str]:
    return {
        "high": settings.queue_url_high,
        "default": settings.queue_url_default,
        "low": settings.queue_url_low,
        "dead_letter": settings.dead_letter_queue_url,
    }


def queue_depth(deps: Deps, url: str) -> QueueDepth:
    attrs = deps.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return QueueDepth(
        visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


def _timed(fn: Any) -> tuple[Any, float, str | None]:
    # openai is imported here, not at the module's top: POST /chat never calls the model,
    # and importing the SDK is most of the api function's cold start.
    from openai import OpenAIError

    started = time.perf_counter()
    try:
        value, error = fn(), None
    except (ClientError, BotoCoreError, OpenAIError, StoreUnavailable) as e:
        value, error = None, f"{type(e).__name__}: {e}"[:300]
    return value, round((time.perf_counter() - started) * 1000, 2), error


def health_full(deps: Deps) -> HealthFull:
    s = deps.settings
    tables = {}
    described, ms, error = _timed(lambda: deps.dynamodb.describe_table(TableName=s.requests_table))
    status = described["Table"]["TableStatus"] if described else None
    tables["requests"] = Check(ok=status == "ACTIVE", latency_ms=ms, detail=error or status)
    # The chunk log: its DynamoDB table, or the Redis server (CHUNKLOG_BACKEND).
    pong, ms, error = _timed(deps.log.ping)
    detail = error or f"{s.chunklog_backend}: {pong}"
    tables["chunks"] = Check(ok=pong is not None, latency_ms=ms, detail=detail)
    queues = {}
    for name, url in queue_urls(s).items():
        depth, ms, error = _timed(lambda u=url: queue_depth(deps, u))
        queues[name] = QueueCheck(ok=depth is not None, latency_ms=ms, detail=error, depth=depth)
    models, ms, error = _timed(lambda: deps.openai.models.list())
    model = Check(ok=models is not None, latency_ms=ms, detail=error or s.model_id)
    ok = model.ok and all(c.ok for c in [*tables.values(), *queues.values()])
    return HealthFull(status="ok" if ok else "degraded", tables=tables, queues=queues, model=model)


def _percentiles(values: list[float]) -> LatencyStats:
    if not values:
        return LatencyStats(count=0)
    if len(values) == 1:
        return LatencyStats(count=1, p50=round(values[0], 4), p95=round(values[0], 4))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return LatencyStats(count=len(values), p50=round(cuts[49], 4), p95=round(cuts[94], 4))


def stats(deps: Deps, now: float | None = None) -> Stats:
    s = deps.settings
    now = time.time() if now is None else now
    tasks = deps.tasks.recent(since=now - s.stats_window_seconds, now=now)
    queues = {name: queue_depth(deps, url) for name, url in queue_urls(s).items()}
    ttft = [t.first_token_at - t.created_at for t in tasks if t.first_token_at]
    rates = []
    for t in tasks:
        tokens = (t.usage or {}).get("completion_tokens")
        if t.status == "done" and tokens and t.first_token_at and t.finished_at:
            streaming = t.finished_at - t.first_token_at
            if streaming > 0:
                rates.append(tokens / streaming)

    def lane(priority: int) -> str:
        return "high" if priority >= 5 else "low" if priority <= -5 else "default"

    newest = sorted(tasks, key=lambda t: t.created_at, reverse=True)[:20]
    return Stats(
        window_seconds=s.stats_window_seconds,
        queues=queues,
        requests=dict(Counter(t.status for t in tasks)),
        by_priority=dict(Counter(lane(t.priority) for t in tasks)),
        ttft_seconds=_percentiles(ttft),
        tokens_per_second=_percentiles(rates),
        recent=[
            {
                "status": t.status,
                "priority": t.priority,
                "created_at": t.created_at,
                "first_token_at": t.first_token_at,
                "finished_at": t.finished_at,
            }
            for t in newest
        ],
    )


def test_model(deps: Deps) -> ModelTest:
    model = deps.settings.model_id
    reply, ms, error = _timed(
        lambda: deps.openai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Reply with OK."}], max_tokens=5
        )
    )
    text = reply.choices[0].message.content if reply is not None else None
    return ModelTest(ok=error is None, model=model, latency_ms=ms, reply=text, error=error)
