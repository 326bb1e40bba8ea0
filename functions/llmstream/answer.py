"""The worker's core: run one task from claim to terminal event.

Every claimed task ends with exactly one terminal event in its chunk log (done, error or
cancelled) and the matching status on its row, or the attempt ends in an outcome the worker
turns into a later delivery: RetryLater (a failure that may pass), RateLimited (no model
capacity yet), RequestUnusable (nothing to answer), ClaimLost (a newer attempt has it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openai import APIError, OpenAIError

from llmstream.chunklog.writer import ChunkWriter
from llmstream.deps import Deps
from llmstream.endings import (
    CANCELLED,
    DONE,
    ERROR,
    TIMED_OUT,
    control,
    end,
    fail,
    finish_ended,
)
from llmstream.exceptions import (
    ClaimLost,
    RateLimited,
    RequestUnusable,
    RetryLater,
    StoreUnavailable,
    TaskAlreadyFinal,
    TaskNotFound,
)
from llmstream.limits import estimate_tokens
from llmstream.llm import Arguments, CallStarted, Finished, open_stream, pieces, prompt
from llmstream.models import EventKind
from llmstream.observe import Record, Unit
from llmstream.retry import backoff, describe, transient
from llmstream.settings import priority_name
from llmstream.spending import Spending, last_delivery, settle_ended
from llmstream.tasks import Task
from llmstream.watchdog import Watchdog

if TYPE_CHECKING:
    from openai import Stream
    from openai.types.chat import ChatCompletionChunk

logger = logging.getLogger(__name__)

RETRIED, RATE_LIMITED = "AnswersRetried", "AnswersRateLimited"


def run_task(
    deps: Deps,
    task_id: str,
    *,
    receive_count: int = 1,
    remaining_seconds: Callable[[], float] | None = None,
    keep_alive: Callable[[], None] | None = None,
    metrics: Record | None = None,
) -> None:
    """Claim ``task_id`` and stream its answer into the chunk log.

    ``keep_alive`` extends the attempt's hold on its delivery by the heartbeat window; it is
    called every quarter window while the answer runs. Raises RetryLater when a transient
    failure should be tried again later, RateLimited when the model has no capacity for it
    yet, RequestUnusable for a task id with no request row, ClaimLost when a newer attempt
    took the task over (it is that attempt's now), and other exceptions only when the
    outcome could not be recorded (store unreachable), so that the task is tried again.
    Every other ending is a terminal event.

    ``metrics`` collects the attempt's figures (time in queue, the model's and the
    pipeline's time to first token, tokens per second, duration, chunk-log write latency,
    the outcome); the caller flushes it.
    """
    metrics = metrics if metrics is not None else Record("worker")
    try:
        task = deps.tasks.claim(task_id)
    except TaskNotFound as e:
        raise RequestUnusable(
            f"task {task_id} has no request row (expired, or never existed)"
        ) from e
    except TaskAlreadyFinal as e:
        logger.info("skipping redelivered message: %s", e)
        return
    _describe_attempt(deps, task, metrics)
    next_seq = 1
    if task.attempt > 1:
        # A previous attempt died mid-answer (its delivery came back after the heartbeat
        # window) or was deferred. Continue the log after what it wrote; if it had
        # finished, just settle the row.
        last = deps.log.last(task_id)
        if last is not None and last.terminal:
            settle_ended(deps, task, last.data)
            finish_ended(deps, task_id, task.attempt, last.kind, last.data)
            return
        next_seq = (last.seq + 1) if last else 1
    last_delivery(deps, task, receive_count)  # no reservation left for the DLQ to keep
    writer = ChunkWriter(
        deps.log,
        task_id,
        next_seq=next_seq,
        interval=deps.settings.flush_interval_seconds,
        max_chars=deps.settings.chunk_max_chars,
        attempt=task.attempt,
        still_mine=lambda: deps.tasks.get(task_id).attempt == task.attempt,
    )
    try:
        attempt = Attempt(deps, task, writer, metrics, receive_count, keep_alive)
        attempt.run(next_seq, remaining_seconds)
    finally:
        writer.close()
        for ms in writer.write_ms:
            metrics.measure("ChunkLogWriteLatency", ms, Unit.Milliseconds)


def _describe_attempt(deps: Deps, task: Task, metrics: Record) -> None:
    """The attempt's dimensions and properties, and its time in the queue if it is the first."""
    metrics.dimension(
        priority=priority_name(task.priority),
        backend=deps.settings.chunklog_backend,
        model=task.model,
    )
    metrics.property(task_id=task.task_id, attempt=task.attempt, trace_id=task.trace_id)
    if task.attempt == 1 and task.started_at:
        metrics.measure("QueueTime", (task.started_at - task.created_at) * 1000, Unit.Milliseconds)


class Attempt:
    """One claimed attempt at a task's answer: its steps, and how each way it ends is
    recorded (terminal event and row, or an outcome for the worker, and the metrics)."""

    def __init__(
        self,
        deps: Deps,
        task: Task,
        writer: ChunkWriter,
        metrics: Record,
        receive_count: int,
        keep_alive: Callable[[], None] | None,
    ) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.task = task
        self.writer = writer
        self.metrics = metrics
        self.receive_count = receive_count
        self.keep_alive = keep_alive
        self.first_at: float | None = None  # wall clock, when the first token came
        self.spending = Spending(deps, task)

    def run(self, next_seq: int, remaining_seconds: Callable[[], float] | None) -> None:
        if self.task.cancel_requested:
            self._end("cancelled", {"type": "cancelled"})
            return
        budget = self.settings.answer_timeout_seconds
        if remaining_seconds is not None:
            budget = min(budget, remaining_seconds() - self.settings.lambda_margin_seconds)
            if budget <= 0:
                self._no_time_left(budget)  # RetryLater, or the last attempt's error
                return
        messages = prompt(self.deps.tasks, self.settings, self.task)
        self._take_capacity(estimate_tokens(messages, self.task.max_tokens))
        try:
            if next_seq > 1:
                self.writer.event("reset", {"type": "reset", "attempt": self.task.attempt})
            self._answer(messages, budget)
        except ClaimLost as e:
            # Another attempt owns the task now; it will write the terminal event. Its
            # delivery is that attempt's too: leave it alone.
            logger.warning("task %s: %s", self.task.task_id, e)
            raise
        except (APIError, OpenAIError) as e:
            self._model_failed(e)
        except StoreUnavailable as e:
            self._store_failed(e)
        except Exception as e:  # a bug must still end the stream, not leave it hanging
            logger.exception("task %s failed", self.task.task_id)
            self.metrics.count(ERROR)
            self._fail(f"internal error: {type(e).__name__}")
        finally:
            self._wrap_up()

    def _take_capacity(self, estimate: int) -> None:
        """Take the answer's estimate from the shared rate limits; without room now, the
        task waits (RateLimited), not this attempt."""
        wait = self.deps.limits.acquire(estimate)
        self.spending.estimate = 0 if wait > 0 else estimate
        if wait > 0:
            self.deps.tasks.defer(
                self.task.task_id,
                self.task.attempt,
                time.time() + wait,
                f"rate limited: waiting {wait:.0f}s for model capacity",
            )
            self.metrics.count(RATE_LIMITED)
            raise RateLimited(wait)

    def _answer(self, messages: list[dict[str, str]], budget: float) -> None:
        """Call the model and relay its tokens under the watchdog; then record the ending."""
        asked, self.spending.called = time.time(), True
        stream = open_stream(self.deps.openai, self.task, messages)
        self.writer.start()
        watchdog = Watchdog(
            check=lambda: control(self.deps, self.task),
            deadline=time.monotonic() + budget,
            interval=self.settings.cancel_check_interval_ms / 1000,
            stop=stream.close,
            beat=self._beat,
            beat_every=self.settings.worker_heartbeat_seconds / 4,
        )
        with watchdog:
            finished = self._relay(stream, watchdog, asked)
        if watchdog.reason == "claim lost":
            raise ClaimLost(f"task {self.task.task_id}: attempt {self.task.attempt} was superseded")
        if watchdog.reason == "cancelled":
            self._end("cancelled", {"type": "cancelled"})
        elif watchdog.reason == "timeout":
            self.metrics.count(TIMED_OUT)
            self._fail(f"timeout: no answer within {budget:.0f}s")
        else:
            self._done(finished)

    def _beat(self) -> None:
        if self.keep_alive is not None:
            self.keep_alive()
        self.deps.tasks.beat(self.task.task_id, self.task.attempt)
        self.spending.checkpoint("".join(self.writer.text))

    def _relay(
        self, stream: Stream[ChatCompletionChunk], watchdog: Watchdog, asked: float
    ) -> Finished | None:
        """The model's tokens into the log, until it finishes or the watchdog stops it."""
        try:
            for piece in pieces(stream):
                if isinstance(piece, Finished):
                    return piece
                if watchdog.reason:
                    break
                if isinstance(piece, CallStarted):
                    self.writer.call(piece.call_id, piece.name)
                elif isinstance(piece, Arguments):
                    self.writer.arguments(piece.delta)
                else:
                    self.writer.add(piece)
                if self.first_at is None:
                    self._first_token(asked)
        except Exception:
            if not watchdog.reason:  # closing the stream makes the loop raise: expected
                raise
        return None

    def _first_token(self, asked: float) -> None:
        self.first_at = first_at = time.time()
        model_ms = (first_at - asked) * 1000
        self.metrics.measure("ModelTimeToFirstToken", model_ms, Unit.Milliseconds)
        first_chunk_at = self.writer.first_chunk_at
        if self.task.attempt == 1 and first_chunk_at is not None:
            # From the request to its first text in the log, and what of that the pipeline
            # added (the queue, the claim, the history, the first write) to the model's own
            # wait.
            waited = (first_chunk_at - self.task.created_at) * 1000
            self.metrics.measure("TimeToFirstToken", waited, Unit.Milliseconds)
            self.metrics.measure(
                "PipelineTimeToFirstToken", max(0.0, waited - model_ms), Unit.Milliseconds
            )
        self.deps.tasks.mark_first_token(self.task.task_id, self.task.attempt, first_at)

    def _done(self, finished: Finished | None) -> None:
        usage = finished.usage if finished else None
        self.spending.usage.update(usage or {})
        data: dict[str, Any] = {"type": "done", "usage": usage}
        if finished and finished.finish_reason:
            data["finish_reason"] = finished.finish_reason
        if self.writer.calls:
            data["calls"] = self.writer.calls  # whole, for a reader of the last event alone
        self._end("done", data)
        completion = (usage or {}).get("completion_tokens")
        if completion and self.first_at is not None:
            seconds = time.time() - self.first_at
            if seconds > 0:
                self.metrics.measure("TokensPerSecond", completion / seconds, Unit.CountPerSecond)
        logger.info("task %s done: %d chunks", self.task.task_id, self.writer.chunks_written)

    def _model_failed(self, error: Exception) -> None:
        reason = f"model error: {describe(error)}"
        if transient(error) and self.receive_count < self.settings.max_receive_count:
            delay = backoff(self.settings, self.receive_count)
            self.deps.tasks.defer(self.task.task_id, self.task.attempt, time.time() + delay, reason)
            self.metrics.count(RETRIED)
            raise RetryLater(delay, reason) from error
        self.metrics.count(ERROR)
        self._fail(reason, getattr(error, "status_code", None))

    def _no_time_left(self, budget: float) -> None:
        """The invocation's start took its whole Timeout (a cold start on a busy host, a
        long queue for the model's capacity): the model was never asked, so this is no
        answer's failure. The next attempt gets a whole invocation; the last one allowed
        ends the task."""
        reason = f"no time left in this invocation ({budget:.1f}s after the margin)"
        if self.receive_count < self.settings.max_receive_count:
            delay = backoff(self.settings, self.receive_count)
            self.deps.tasks.defer(self.task.task_id, self.task.attempt, time.time() + delay, reason)
            self.metrics.count(RETRIED)
            raise RetryLater(delay, reason)
        self.metrics.count(TIMED_OUT)
        self._fail(f"timeout: {reason}")

    def _store_failed(self, error: StoreUnavailable) -> None:
        # The chunk log or the request table did not answer (the SDK's and redis-py's own
        # retries spent). Try again after the backoff, not the queue's long visibility
        # timeout: the next attempt continues the log after its last event.
        reason = f"store unavailable: {error}"
        if self.receive_count < self.settings.max_receive_count:
            self.metrics.count(RETRIED)
            raise RetryLater(backoff(self.settings, self.receive_count), reason) from error
        self.metrics.count(ERROR)
        self._fail(reason)  # if it is still down: the DLQ

    def _end(self, kind: EventKind, data: dict[str, Any]) -> None:
        end(self.deps, self.writer, self.task, kind, data, self.metrics, self._settle)

    def _fail(self, message: str, model_status: int | None = None) -> None:
        fail(self.deps, self.writer, self.task, message, self._settle, model_status)

    def _settle(self) -> None:
        self.spending.settle(self.writer.said)

    def _wrap_up(self) -> None:
        """How long the answer took, and the tokens it spent settled and charged."""
        task, metrics = self.task, self.metrics
        if task.started_at and any(metrics.has(m) for m in (DONE, ERROR, CANCELLED, TIMED_OUT)):
            metrics.measure("AnswerDuration", time.time() - task.started_at, Unit.Seconds)
        self.spending.close(self.writer.said)
