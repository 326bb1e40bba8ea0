"""The worker's core: run one task from claim to terminal event.

Every claimed task ends with exactly one terminal event in its chunk log (done, error or
cancelled) and the matching status on its row, or the message is left for SQS to redeliver
(and, after maxReceiveCount, to move to the DLQ).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from openai import APIError, OpenAIError

from llmstream.chunklog.base import ChunkLog
from llmstream.deps import Deps
from llmstream.exceptions import ClaimLost, TaskAlreadyFinal, TaskNotFound
from llmstream.llm import Finished, stream_chat
from llmstream.models import EventKind

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class ChunkWriter:
    """Coalesces model tokens into chunk-log events.

    The first piece is written at once (time to first token is what a user feels); after
    that text is held until ``interval`` has passed since the last write or ``max_chars``
    is reached, so a 50 tokens/s answer costs ~10 writes/s instead of 50.
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
    ) -> None:
        self._log = log
        self._task_id = task_id
        self._seq = next_seq - 1
        self._interval = interval
        self._max_chars = max_chars
        self._clock = clock
        self._buffer: list[str] = []
        self._buffered = 0
        self._last_write: float | None = None
        self.chunks_written = 0

    @property
    def seq(self) -> int:
        """Seq of the last event written."""
        return self._seq

    def add(self, text: str) -> None:
        self._buffer.append(text)
        self._buffered += len(text)
        now = self._clock()
        if (
            self._last_write is None
            or now - self._last_write >= self._interval
            or self._buffered >= self._max_chars
        ):
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        text = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        for start in range(0, len(text), self._max_chars):
            self._write("chunk", {"chunk": text[start : start + self._max_chars]})
            self.chunks_written += 1
        self._last_write = self._clock()

    def event(self, kind: EventKind, data: dict[str, Any]) -> None:
        """Write a non-text event (reset or terminal) after any held text."""
        self.flush()
        self._write(kind, data)

    def _write(self, kind: EventKind, data: dict[str, Any]) -> None:
        self._log.append(self._task_id, self._seq + 1, kind, data)  # SeqConflict: lost
        self._seq += 1


def run_task(deps: Deps, task_id: str) -> None:
    """Claim ``task_id`` and stream its answer into the chunk log.

    Raises only when the outcome could not be recorded (store unreachable), so that SQS
    redelivers the message; every other failure ends as an ``error`` terminal event.
    """
    try:
        task = deps.tasks.claim(task_id)
    except TaskNotFound:
        logger.warning("task %s has no request row (expired?); dropping message", task_id)
        return
    except TaskAlreadyFinal as e:
        logger.info("skipping redelivered message: %s", e)
        return

    settings = deps.settings
    next_seq = 1
    if task.attempt > 1:
        # A previous attempt died mid-answer (the message came back after its visibility
        # timeout). Continue the log after what it wrote; if it had finished, just settle.
        last = deps.log.last(task_id)
        if last is not None and last.terminal:
            _settle(deps, task_id, task.attempt, last.kind, last.data)
            return
        next_seq = (last.seq + 1) if last else 1
    writer = ChunkWriter(
        deps.log,
        task_id,
        next_seq=next_seq,
        interval=settings.chunk_flush_interval_ms / 1000,
        max_chars=settings.chunk_max_chars,
    )
    try:
        if task.attempt > 1:
            writer.event("reset", {"type": "reset", "attempt": task.attempt})
        first = True
        finished: Finished | None = None
        for piece in stream_chat(deps.openai, task):
            if isinstance(piece, Finished):
                finished = piece
                break
            writer.add(piece)
            if first:
                first = False
                deps.tasks.mark_first_token(task_id, task.attempt, time.time())
        usage = finished.usage if finished else None
        data: dict[str, Any] = {"type": "done", "usage": usage}
        if finished and finished.finish_reason:
            data["finish_reason"] = finished.finish_reason
        writer.event("done", data)
        deps.tasks.finish(task_id, task.attempt, "done", usage=usage)
        logger.info("task %s done: %d chunks", task_id, writer.chunks_written)
    except ClaimLost as e:
        # Another attempt owns the task now; it will write the terminal event.
        logger.warning("task %s: %s", task_id, e)
    except (APIError, OpenAIError) as e:
        _fail(deps, writer, task_id, task.attempt, f"model error: {_describe(e)}")
    except Exception as e:  # a bug must still end the stream, not leave it hanging
        logger.exception("task %s failed", task_id)
        _fail(deps, writer, task_id, task.attempt, f"internal error: {type(e).__name__}")


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
    deps.tasks.finish(task_id, attempt, "error", error=message)


def _settle(deps: Deps, task_id: str, attempt: int, kind: str, data: dict[str, Any]) -> None:
    if kind == "done":
        deps.tasks.finish(task_id, attempt, "done", usage=data.get("usage"))
    elif kind == "error":
        deps.tasks.finish(task_id, attempt, "error", error=data.get("message"))
    else:
        deps.tasks.finish(task_id, attempt, "cancelled")
