"""The worker's core: run one task from claim to terminal event.

Every claimed task ends with exactly one terminal event in its chunk log (done, error or
cancelled) and the matching status on its row, or the message is left for SQS to redeliver
(and, after maxReceiveCount, to move to the DLQ).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from openai import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    OpenAIError,
    RateLimitError,
)

from llmstream.chunklog.base import ChunkLog
from llmstream.deps import Deps
from llmstream.exceptions import (
    ClaimLost,
    LogDiverged,
    SeqConflict,
    StoreUnavailable,
    TaskAlreadyFinal,
    TaskNotFound,
)
from llmstream.limits import estimate_tokens
from llmstream.llm import Finished, build_messages, open_stream, pieces
from llmstream.models import EventKind
from llmstream.observe import Record, Unit
from llmstream.settings import Settings, priority_name
from llmstream.tasks import Task

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class ChunkWriter:
    """Coalesces model tokens into chunk-log events.

    The first piece is written at once (time to first token is what a user feels); after
    that text is held until ``interval`` has passed since the last write or ``max_chars``
    is reached, so a 40 tokens/s answer costs ~10 writes/s instead of 40. Once started, a
    flusher thread writes held text when its interval is up even if no further token comes
    (a model that pauses must not hold back what it already said).

    Writes are serialised by one lock, so seqs stay dense whichever thread writes. An error
    in the flusher thread (store down, SeqConflict) is raised in the caller's next call.

    A seq taken by another writer means this attempt lost the task, unless ``still_mine``
    says the claim is still ours: then the other writer is a zombie (an attempt whose
    heartbeat lapsed, writing until its watchdog sees the newer claim, within a second).
    The log is taken back: after the zombie's last event a reset, then this attempt's text
    so far, so the text after the last reset is this attempt's alone.
    """

    def __init__(
        self,
        log: ChunkLog,
        task_id: str,
        *,
        next_seq: int,
        interval: float,
        max_chars: int,
        clock: Clock = time.monotonic,
        attempt: int = 1,
        still_mine: Callable[[], bool] | None = None,
    ) -> None:
        self._log = log
        self._attempt = attempt
        self._still_mine = still_mine
        self._written: list[str] = []  # text this attempt has in the log
        self._task_id = task_id
        self._seq = next_seq - 1
        self._interval = interval
        self._max_chars = max_chars
        self._clock = clock
        self._buffer: list[str] = []
        self._buffered = 0
        self._last_write: float | None = None
        self._lock = threading.Condition(threading.RLock())
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.chunks_written = 0
        self.text: list[str] = []  # this attempt's answer, for the session history
        self.write_ms: list[float] = []  # each chunk-log write's latency
        self.first_chunk_at: float | None = None  # wall clock, when the first text was written

    @property
    def seq(self) -> int:
        """Seq of the last event written."""
        return self._seq

    def start(self) -> ChunkWriter:
        """Start the flusher thread (the worker does; unit tests drive the clock instead)."""
        self._thread = threading.Thread(target=self._flusher, name="chunk-flusher", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the flusher thread; held text is written by ``event`` or dropped with it."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def add(self, text: str) -> None:
        with self._lock:
            self._raise_flusher_error()
            self.text.append(text)
            self._buffer.append(text)
            self._buffered += len(text)
            if (
                self._last_write is None
                or self._clock() - self._last_write >= self._interval
                or self._buffered >= self._max_chars
            ):
                self.flush()
            else:
                self._lock.notify_all()  # the flusher times the held text

    def flush(self) -> None:
        with self._lock:
            self._raise_flusher_error()
            if not self._buffer:
                return
            text = "".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            began = self._clock()
            for start in range(0, len(text), self._max_chars):
                piece = text[start : start + self._max_chars]
                self._write("chunk", {"chunk": piece})
                self._written.append(piece)
                self.chunks_written += 1
            # Writes start one interval apart (the cadence a reader expects from the write
            # stamps) while the store is fast; when it slows down, at least half an interval
            # passes after each write ends, so writes space out and carry more text instead
            # of queueing up behind each other.
            self._last_write = max(began, self._clock() - self._interval / 2)

    def event(self, kind: EventKind, data: dict[str, Any]) -> None:
        """Write a non-text event (reset or terminal) after any held text."""
        with self._lock:
            self.flush()
            self._write(kind, data)

    def resync(self) -> None:
        """Continue after whatever the log holds now (after LogDiverged: it lost events)."""
        with self._lock:
            last = self._log.last(self._task_id)
            self._seq = last.seq if last else 0

    def _write(self, kind: EventKind, data: dict[str, Any]) -> None:
        began = time.perf_counter()
        try:
            self._log.append(self._task_id, self._seq + 1, kind, data)
            self.write_ms.append((time.perf_counter() - began) * 1000)
            if kind == "chunk" and self.first_chunk_at is None:
                self.first_chunk_at = time.time()
        except SeqConflict:
            if self._still_mine is None or not self._still_mine():
                raise  # a newer attempt owns the task (SeqConflict is a ClaimLost)
            logger.warning("task %s: a superseded attempt wrote at our seq", self._task_id)
            self._take_back()
            self._log.append(self._task_id, self._seq + 1, kind, data)
        self._seq += 1

    def _take_back(self) -> None:
        self.resync()
        self._log.append(
            self._task_id, self._seq + 1, "reset", {"type": "reset", "attempt": self._attempt}
        )
        self._seq += 1
        text = "".join(self._written)
        for start in range(0, len(text), self._max_chars):
            self._log.append(
                self._task_id,
                self._seq + 1,
                "chunk",
                {"chunk": text[start : start + self._max_chars]},
            )
            self._seq += 1

    def _raise_flusher_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _flusher(self) -> None:
        with self._lock:
            while not self._closed and self._error is None:
                if not self._buffer or self._last_write is None:
                    self._lock.wait()
                    continue
                due = self._last_write + self._interval - self._clock()
                if due > 0:
                    self._lock.wait(due)
                    continue
                try:
                    self.flush()
                except BaseException as e:  # handed to the token loop's thread
                    self._error = e


class Watchdog:
    """Stops an answer from outside the token loop, and keeps it alive while it runs.

    A stalled model sends no tokens, so a check inside the loop could wait forever; this
    thread closes the model stream instead, which ends the loop at once: on a cancel
    request, at the deadline, or when the task's claim has passed to a newer attempt (this
    one is then a zombie and must stop writing). Every ``beat_every`` seconds it also
    calls ``beat``: the worker's heartbeat, which keeps the SQS message invisible for a
    short window and stamps the request row, so a dead worker's message is back within
    that window instead of the queue's visibility timeout (ClaimLost from it: a zombie).
    """

    def __init__(
        self,
        *,
        check: Callable[[], str | None],
        deadline: float,
        interval: float,
        stop: Callable[[], None],
        beat: Callable[[], None] | None = None,
        beat_every: float = 5.0,
    ) -> None:
        self.reason: str | None = None
        self._check = check
        self._deadline = deadline
        self._interval = interval
        self._stop = stop
        self._beat = beat
        self._beat_every = beat_every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="answer-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._done.wait(min(self._interval, max(0.0, self._deadline - time.monotonic()))):
            now = time.monotonic()
            if now >= self._deadline:
                self.reason = "timeout"
            else:
                try:
                    self.reason = self._check()
                except Exception:  # a failed check is not a cancel; try again next time
                    logger.warning("cancel check failed", exc_info=True)
                if self.reason is None and self._beat and now - last_beat >= self._beat_every:
                    last_beat = now
                    try:
                        self._beat()
                    except ClaimLost:
                        self.reason = "claim lost"
                    except Exception:  # SQS or the table hiccuped: the next beat retries
                        logger.warning("heartbeat failed", exc_info=True)
            if self.reason:
                self._stop()
                return


class Poison(Exception):
    """The message can never be processed (it names no task): straight to the DLQ."""


class Throttled(Exception):
    """Over the shared rate limit: requeue the task to run after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"rate limited for {delay:.0f}s")
        self.delay = delay


class RetryLater(Exception):
    """The task went back to its queue; redeliver the message after ``delay`` seconds."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(f"retry in {delay:.0f}s: {reason}")
        self.delay = delay


def _transient(error: Exception) -> bool:
    """Worth another try later: overload, rate limits, server errors, timeouts."""
    if isinstance(error, (APIConnectionError, APITimeoutError, RateLimitError)):
        return True
    return isinstance(error, APIStatusError) and error.status_code >= 500


# The metrics of an attempt's outcome (observe.py): exactly one per attempt that claimed
# its task, beside AnswersDeadLettered, which the worker counts for a poison message.
DONE, ERROR, CANCELLED, TIMED_OUT = (
    "AnswersDone",
    "AnswersError",
    "AnswersCancelled",
    "AnswersTimedOut",
)
RETRIED, RATE_LIMITED, DEAD_LETTERED = "AnswersRetried", "AnswersRateLimited", "AnswersDeadLettered"


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

    ``keep_alive`` extends the message's visibility by the heartbeat window; it is called
    every quarter window while the answer runs. Raises RetryLater when a transient failure
    should be retried through the queue, Poison for a message naming no task, ClaimLost
    when a newer attempt took the task over (leave the message alone: it is that attempt's
    now), and other exceptions only when the outcome could not be recorded (store
    unreachable), so that SQS redelivers the message. Every other ending is a terminal event.

    ``metrics`` collects the attempt's figures (time in queue, the model's and the
    pipeline's time to first token, tokens per second, duration, chunk-log write latency,
    the outcome); the caller flushes it.
    """
    metrics = metrics if metrics is not None else Record("worker")
    try:
        task = deps.tasks.claim(task_id)
    except TaskNotFound as e:
        raise Poison(f"task {task_id} has no request row (expired, or never existed)") from e
    except TaskAlreadyFinal as e:
        logger.info("skipping redelivered message: %s", e)
        return

    settings = deps.settings
    metrics.dimension(
        priority=priority_name(task.priority), backend=settings.chunklog_backend, model=task.model
    )
    metrics.property(task_id=task_id, attempt=task.attempt, trace_id=task.trace_id)
    if task.attempt == 1 and task.started_at:
        metrics.measure("QueueTime", (task.started_at - task.created_at) * 1000, Unit.Milliseconds)
    next_seq = 1
    if task.attempt > 1:
        # A previous attempt died mid-answer (the message came back after its visibility
        # timeout) or was deferred. Continue the log after what it wrote; if it had
        # finished, just settle the row.
        last = deps.log.last(task_id)
        if last is not None and last.terminal:
            _settle(deps, task_id, task.attempt, last.kind, last.data)
            return
        next_seq = (last.seq + 1) if last else 1
    writer = ChunkWriter(
        deps.log,
        task_id,
        next_seq=next_seq,
        interval=settings.flush_interval_seconds,
        max_chars=settings.chunk_max_chars,
        attempt=task.attempt,
        still_mine=lambda: deps.tasks.get(task_id).attempt == task.attempt,
    )
    try:
        _answer(deps, task, writer, next_seq, remaining_seconds, receive_count, keep_alive, metrics)
    finally:
        writer.close()
        for ms in writer.write_ms:
            metrics.measure("ChunkLogWriteLatency", ms, Unit.Milliseconds)


def _control(deps: Deps, task: Task) -> str | None:
    """Why the running answer must stop now, if it must: a cancel, or a newer claim."""
    cancel_requested, attempt = deps.tasks.control(task.task_id)
    if attempt != task.attempt:
        return "claim lost"
    return "cancelled" if cancel_requested else None


def _answer(
    deps: Deps,
    task: Task,
    writer: ChunkWriter,
    next_seq: int,
    remaining_seconds: Callable[[], float] | None,
    receive_count: int,
    keep_alive: Callable[[], None] | None,
    metrics: Record,
) -> None:
    settings = deps.settings
    task_id = task.task_id
    if task.cancel_requested:
        _end(deps, writer, task, "cancelled", {"type": "cancelled"}, metrics)
        return
    history = (
        deps.tasks.session(task.owner, task.session_id)
        if settings.history_token_budget and not task.new_session
        else []
    )
    messages = build_messages(task, history, settings.history_token_budget)
    # Shared rate limits: without room now, the task waits on its queue, not in Lambda.
    estimate = estimate_tokens(messages, task.max_tokens)
    wait = deps.limits.acquire(estimate)
    if wait > 0:
        deps.tasks.defer(
            task_id,
            task.attempt,
            time.time() + wait,
            f"rate limited: waiting {wait:.0f}s for model capacity",
        )
        metrics.count(RATE_LIMITED)
        raise Throttled(wait)
    budget = settings.answer_timeout_seconds
    if remaining_seconds is not None:
        budget = min(budget, remaining_seconds() - settings.lambda_margin_seconds)
    used: dict[str, Any] = {}
    try:
        if next_seq > 1:
            writer.event("reset", {"type": "reset", "attempt": task.attempt})
        asked = time.time()
        stream = open_stream(deps.openai, task, messages)
        writer.start()

        def beat() -> None:
            if keep_alive is not None:
                keep_alive()
            deps.tasks.beat(task_id, task.attempt)

        watchdog = Watchdog(
            check=lambda: _control(deps, task),
            deadline=time.monotonic() + budget,
            interval=settings.cancel_check_interval_ms / 1000,
            stop=stream.close,
            beat=beat,
            beat_every=settings.worker_heartbeat_seconds / 4,
        )
        finished: Finished | None = None
        first, first_at = True, 0.0
        with watchdog:
            try:
                for piece in pieces(stream):
                    if isinstance(piece, Finished):
                        finished = piece
                        break
                    if watchdog.reason:
                        break
                    writer.add(piece)
                    if first:
                        first = False
                        first_at = time.time()
                        model_ms = (first_at - asked) * 1000
                        metrics.measure("ModelTimeToFirstToken", model_ms, Unit.Milliseconds)
                        if task.attempt == 1 and writer.first_chunk_at is not None:
                            # From the request to its first text in the log, and what of
                            # that the pipeline added (the queue, the claim, the history,
                            # the first write) to the model's own wait.
                            waited = (writer.first_chunk_at - task.created_at) * 1000
                            metrics.measure("TimeToFirstToken", waited, Unit.Milliseconds)
                            metrics.measure(
                                "PipelineTimeToFirstToken",
                                max(0.0, waited - model_ms),
                                Unit.Milliseconds,
                            )
                        deps.tasks.mark_first_token(task_id, task.attempt, first_at)
            except Exception:
                if not watchdog.reason:  # closing the stream makes the loop raise: expected
                    raise
        if watchdog.reason == "claim lost":
            raise ClaimLost(f"task {task_id}: attempt {task.attempt} was superseded")
        if watchdog.reason == "cancelled":
            _end(deps, writer, task, "cancelled", {"type": "cancelled"}, metrics)
        elif watchdog.reason == "timeout":
            metrics.count(TIMED_OUT)
            _fail(deps, writer, task_id, task.attempt, f"timeout: no answer within {budget:.0f}s")
        else:
            usage = finished.usage if finished else None
            used.update(usage or {})
            data: dict[str, Any] = {"type": "done", "usage": usage}
            if finished and finished.finish_reason:
                data["finish_reason"] = finished.finish_reason
            _end(deps, writer, task, "done", data, metrics)
            completion = (usage or {}).get("completion_tokens")
            if completion and not first:
                seconds = time.time() - first_at
                if seconds > 0:
                    metrics.measure("TokensPerSecond", completion / seconds, Unit.CountPerSecond)
            logger.info("task %s done: %d chunks", task_id, writer.chunks_written)
    except ClaimLost as e:
        # Another attempt owns the task now; it will write the terminal event. The message
        # is its message too: leave it to that attempt (no delete, no visibility change).
        logger.warning("task %s: %s", task_id, e)
        raise
    except (APIError, OpenAIError) as e:
        reason = f"model error: {_describe(e)}"
        if _transient(e) and receive_count < settings.max_receive_count:
            delay = _backoff(settings, receive_count)
            deps.tasks.defer(task_id, task.attempt, time.time() + delay, reason)
            metrics.count(RETRIED)
            raise RetryLater(delay, reason) from e
        metrics.count(ERROR)
        _fail(deps, writer, task_id, task.attempt, reason)
    except StoreUnavailable as e:
        # The chunk log or the request table did not answer (the SDK's and redis-py's own
        # retries spent). Back to the queue with the backoff, not the queue's long
        # visibility timeout: the next attempt continues the log after its last event.
        reason = f"store unavailable: {e}"
        if receive_count < settings.max_receive_count:
            metrics.count(RETRIED)
            raise RetryLater(_backoff(settings, receive_count), reason) from e
        metrics.count(ERROR)
        _fail(deps, writer, task_id, task.attempt, reason)  # if it is still down: the DLQ
    except Exception as e:  # a bug must still end the stream, not leave it hanging
        logger.exception("task %s failed", task_id)
        metrics.count(ERROR)
        _fail(deps, writer, task_id, task.attempt, f"internal error: {type(e).__name__}")
    finally:
        if task.started_at and any(metrics.has(m) for m in (DONE, ERROR, CANCELLED, TIMED_OUT)):
            metrics.measure("AnswerDuration", time.time() - task.started_at, Unit.Seconds)
        # The estimate was taken from the token bucket; settle it with what was used.
        actual = int(
            used.get("total_tokens")
            or estimate - min(task.max_tokens or 1024, 1024) + len("".join(writer.text)) // 4
        )
        deps.limits.settle(estimate, actual)
        # Every attempt that called the model spent its tokens, retried or not. A failed
        # charge must not hide how the answer ended.
        try:
            deps.quotas.charge(task.owner, actual)
        except StoreUnavailable:
            logger.warning("task %s: could not charge %d tokens to its owner", task_id, actual)


def _end(
    deps: Deps,
    writer: ChunkWriter,
    task: Task,
    kind: EventKind,
    data: dict[str, Any],
    metrics: Record,
) -> None:
    writer.event(kind, data)
    metrics.count(DONE if kind == "done" else CANCELLED)
    if kind == "done":
        answer = "".join(writer.text)[: deps.settings.answer_max_chars]
        deps.tasks.finish(
            task.task_id, task.attempt, "done", usage=data.get("usage"), answer=answer
        )
    else:
        deps.tasks.finish(task.task_id, task.attempt, "cancelled")


def _backoff(settings: Settings, receive_count: int) -> float:
    return float(
        min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (receive_count - 1))
    )


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    text = str(error) or type(error).__name__
    return f"{status} {text}" if status else text


def _fail(deps: Deps, writer: ChunkWriter, task_id: str, attempt: int, message: str) -> None:
    logger.warning("task %s ends in error: %s", task_id, message)
    try:
        writer.event("error", {"type": "error", "message": message})
    except ClaimLost:
        return
    except LogDiverged:
        # The log lost events under this attempt and there is no retry left: the error
        # still has to reach viewers, after whatever the log holds now.
        writer.resync()
        writer.event("error", {"type": "error", "message": message})
    deps.tasks.finish(task_id, attempt, "error", error=message)


def _settle(deps: Deps, task_id: str, attempt: int, kind: str, data: dict[str, Any]) -> None:
    if kind == "done":
        deps.tasks.finish(task_id, attempt, "done", usage=data.get("usage"))
    elif kind == "error":
        deps.tasks.finish(task_id, attempt, "error", error=data.get("message"))
    else:
        deps.tasks.finish(task_id, attempt, "cancelled")
