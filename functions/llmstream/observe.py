"""What an operator sees: JSON logs with correlation keys, CloudWatch metrics in the
embedded metric format (EMF), and one trace id that follows an answer through all three
functions.

Logs: Powertools Logger, named after POWERTOOLS_SERVICE_NAME ("llmstream"), so every
``llmstream.*`` module logger propagates to it and writes the same JSON. The correlation
keys live in a context variable (safe with threads and asyncio tasks): ``function``,
``trace_id``, ``task_id`` and ``user`` (the owner's sub). A log line says what happened to
which task; it never carries prompt or answer text, and never a token.

Metrics: one EMF record per answer attempt (worker), per chat request accepted or refused
(api) and per stream response (stream), printed to stdout, where Lambda's log stream
hands it to CloudWatch Metrics (no API call, no permission). Dimensions stay few:
``function`` and, where they apply, ``priority``, ``backend`` and ``model``, plus a rollup
per function alone (what the dashboard and the alarms read); never a user or a task (those
go in as properties, searchable in the logs).

Traces: Lambda's active tracing records every invocation; the functions carry no tracing
SDK (the X-Ray SDK under Powertools Tracer is in maintenance mode since 2026-02-25, and the
OpenTelemetry layer would add its collector to every cold start). The api takes its
invocation's X-Ray trace header (or the caller's, or mints one), sends it with the SQS
message as the AWSTraceHeader system attribute, which X-Ray uses to link the worker's
invocation into the same trace, and stores the trace id on the request row, where the
stream function reads it.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "llmstream")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "llmstream")
# Named after the service, so every llmstream.* module logger propagates to it.
logger = Logger(service=SERVICE)

TRACE_ENV = "_X_AMZN_TRACE_ID"  # Lambda sets it for each invocation when tracing is active
TRACE_HEADER = "x-amzn-trace-id"
# EMF takes at most 100 values of one metric in one record, and Powertools publishes a
# record by itself on the 100th: 99 keep each record whole.
_MAX_VALUES = 99
ROLLUP = ("function", "service")  # the dimensions of the series the dashboard reads

Unit = MetricUnit

# Every metric the functions emit, and what it means (the README's "Operating it" lists
# them, the dashboard and the alarms read them; a name not here is refused).
METRICS: dict[str, str] = {
    "ChatAccepted": "api: a chat request recorded and queued (202)",
    "RequestsRateLimited": "api: a chat request refused over its user's quota (429)",
    "QueueTime": "worker, ms: from the request to its first claim (SQS, event source, init)",
    "TimeToFirstToken": "worker, ms: from the request to its first text in the chunk log",
    "ModelTimeToFirstToken": "worker, ms: from the model call to the model's first token",
    "PipelineTimeToFirstToken": "worker, ms: TimeToFirstToken minus the model's own wait",
    "TokensPerSecond": "worker: completion tokens per second after the first token",
    "AnswerDuration": "worker, s: from the claim to the terminal event",
    "ChunkLogWriteLatency": "worker, ms: one chunk-log write (a value per write)",
    "AnswersDone": "worker: an answer ended done",
    "AnswersError": "worker: an answer ended in an error (model, store or internal)",
    "AnswersTimedOut": "worker: an answer ended in an error at its time limit",
    "AnswersCancelled": "worker: an answer ended cancelled",
    "AnswersRetried": "worker: an attempt went back to its queue to be retried (backoff)",
    "AnswersDeadLettered": "worker: a poison message moved to the dead-letter queue",
    "AnswersRateLimited": "worker: an attempt waited for the shared model rate limits",
    "StreamsOpened": "stream: an SSE response began",
    "StreamResumes": "stream: an SSE response resumed after Last-Event-ID (a reconnect)",
    "StreamsRefused": "stream: a stream refused, its user's streams all open (429)",
    "StreamsCutShort": "stream: a response the server ended before the terminal event",
    "StreamDuration": "stream, s: one SSE response, open to close",
}


def setup(function: str) -> None:
    """Name the function on every line this process logs (the entry modules call it)."""
    logger.append_keys(function=function)


def trace_header(incoming: str | None = None) -> str:
    """This request's X-Ray trace header: Lambda's for the invocation, else the caller's
    (``X-Amzn-Trace-Id``), else a new root (locally, where nothing traces)."""
    for header in (os.environ.get(TRACE_ENV), incoming):
        if header and trace_id(header):
            return header
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Sampled=0"


def trace_id(header: str | None) -> str | None:
    """The Root of an X-Ray trace header (``Root=1-...;Parent=...;Sampled=1``)."""
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "Root" and value.startswith("1-"):
            return value
    return None


def trace_attribute(header: str | None) -> dict[str, Any]:
    """SendMessage's argument that carries a trace header with the message (empty without
    one): SQS hands it to the consumer as the AWSTraceHeader attribute."""
    if not header:
        return {}
    return {
        "MessageSystemAttributes": {"AWSTraceHeader": {"DataType": "String", "StringValue": header}}
    }


_trace: ContextVar[str | None] = ContextVar("llmstream_trace_header", default=None)


@contextmanager
def tracing(header: str) -> Iterator[None]:
    """The trace header of the request being served (``current_trace``)."""
    token = _trace.set(header)
    try:
        yield
    finally:
        _trace.reset(token)


def current_trace() -> str:
    """The trace header of the request being served, or a new one outside a request."""
    return _trace.get() or trace_header()


def correlate(**keys: Any) -> None:
    """Add correlation keys to this request's (or record's) log lines."""
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})


@contextmanager
def request_scope(**keys: Any) -> Iterator[None]:
    """Correlation keys for one request or record: none of an earlier one's survive."""
    logger.thread_safe_clear_keys()
    correlate(**keys)
    try:
        yield
    finally:
        logger.thread_safe_clear_keys()


class Record:
    """One EMF record: metrics with the dimensions of one request or answer, flushed once.

    ``count`` and ``measure`` may be called from several threads of one answer (the
    flusher, the watchdog); values of a metric are kept in order, at most 99 in the record
    (spread evenly over what was measured: EMF allows 100 in one record)."""

    def __init__(self, function: str, **dimensions: str | None) -> None:
        self._metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
        self._dimensions = {"function": function, **{k: v for k, v in dimensions.items() if v}}
        self._values: dict[str, tuple[MetricUnit, list[float]]] = {}
        self._properties: dict[str, Any] = {}
        self.flushed = False

    def dimension(self, **dimensions: str | None) -> None:
        self._dimensions.update({k: v for k, v in dimensions.items() if v})

    def count(self, name: str, value: float = 1) -> None:
        self.measure(name, value, MetricUnit.Count)

    def measure(self, name: str, value: float, unit: MetricUnit) -> None:
        if name not in METRICS:
            raise ValueError(f"metric {name!r} is not in observe.METRICS")
        self._values.setdefault(name, (unit, []))[1].append(float(value))

    def has(self, name: str) -> bool:
        return name in self._values

    def property(self, **properties: Any) -> None:
        """Searchable in the log line, never a dimension (a task id, a user, a trace)."""
        self._properties.update({k: v for k, v in properties.items() if v is not None})

    def flush(self) -> None:
        """Print the record (once), if it holds a metric."""
        if self.flushed or not self._values:
            return
        self.flushed = True
        for name, label in self._dimensions.items():
            self._metrics.add_dimension(name, label)
        for name, (unit, values) in self._values.items():
            for value in _spread(values, _MAX_VALUES):
                self._metrics.add_metric(name=name, unit=unit, value=value)
        for key, value in self._properties.items():
            self._metrics.add_metadata(key, value)
        record: dict[str, Any] = dict(self._metrics.serialize_metric_set())
        # A second, coarser dimension set: each metric per function alone, which the
        # dashboard and the alarms read (one series, whatever the queues and models).
        for directive in record["_aws"]["CloudWatchMetrics"]:
            finest = directive["Dimensions"][0]
            rollup = [d for d in finest if d in ROLLUP]
            if rollup != finest:
                directive["Dimensions"].append(rollup)
        # stdout, as Powertools prints EMF: Lambda's log stream, where CloudWatch reads it
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        self._metrics.clear_metrics()


def _spread(values: list[float], n: int) -> list[float]:
    if len(values) <= n:
        return values
    step = len(values) / n
    return [values[int(i * step)] for i in range(n)]
