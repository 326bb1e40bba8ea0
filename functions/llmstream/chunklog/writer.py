"""ChunkWriter: one answer attempt's text and events into the chunk log, batched, with seqs
kept dense and the log taken back from a superseded attempt still writing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from llmstream.chunklog.base import ChunkLog
from llmstream.exceptions import SeqConflict
from llmstream.models import EventKind

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
        # the events of this attempt's answer in the log (text, calls, arguments)
        self._written: list[tuple[EventKind, dict[str, Any]]] = []
        self._task_id = task_id
        self._seq = next_seq - 1
        self._interval = interval
        self._max_chars = max_chars
        self._clock = clock
        self._buffer: list[str] = []
        self._buffered = 0
        self._buffer_kind: EventKind = "chunk"  # what the held text is: answer or arguments
        self._last_write: float | None = None
        self._lock = threading.Condition(threading.RLock())
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.chunks_written = 0
        self.text: list[str] = []  # this attempt's answer, for the session history
        # this attempt's function calls: {"id", "name", "arguments"}, in order
        self.calls: list[dict[str, str]] = []
        self.write_ms: list[float] = []  # each chunk-log write's latency
        self.first_chunk_at: float | None = None  # wall clock, when the first text was written

    @property
    def seq(self) -> int:
        """Seq of the last event written."""
        return self._seq

    @property
    def said(self) -> str:
        """All this attempt said: its text and its calls' names and arguments (what an
        estimate of its output tokens counts)."""
        calls = "".join(c["name"] + c["arguments"] for c in self.calls)
        return "".join(self.text) + calls

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
        """More of the answer's text."""
        with self._lock:
            self._hold("chunk", text)
            self.text.append(text)

    def call(self, call_id: str, name: str) -> None:
        """A function call starts (a ``call`` event, after any held text); its arguments
        follow through ``arguments``, and it ends where the next item starts."""
        self.calls.append({"id": call_id, "name": name, "arguments": ""})
        self.event("call", {"type": "call", "id": call_id, "name": name})

    def arguments(self, delta: str) -> None:
        """More of the current call's arguments (``args`` events, held like text)."""
        with self._lock:
            if not self.calls:
                return  # arguments with no call: nothing to add them to
            self._hold("args", delta)
            self.calls[-1]["arguments"] += delta

    def _hold(self, kind: EventKind, text: str) -> None:
        with self._lock:
            self._raise_flusher_error()
            if kind != self._buffer_kind:
                self.flush()
                self._buffer_kind = kind
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
                event = _text_event(self._buffer_kind, piece)
                self._write(*event)
                self._written.append(event)
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
            if kind == "call":
                self._written.append((kind, data))

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
        for kind, data in self._written:
            self._log.append(self._task_id, self._seq + 1, kind, data)
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


def _text_event(kind: EventKind, piece: str) -> tuple[EventKind, dict[str, Any]]:
    """Held text as its event: the answer's (``chunk``) or a call's arguments (``args``)."""
    if kind == "args":
        return "args", {"type": "args", "delta": piece}
    return "chunk", {"chunk": piece}
