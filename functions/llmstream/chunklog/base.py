"""The chunk-log contract that every backend fulfils (tests/integration/test_chunklog.py).

Seqs are dense: a task's events are numbered 1, 2, 3, ... with no gap, written by one
owner at a time. ``append`` at a seq that exists fails with SeqConflict, which is how a
second writer (a redelivered message while the first attempt still runs) finds out it lost;
``append`` of seq n where n-1 is not the log's last event fails with LogDiverged, so a
writer never continues a log it did not write (one a store restart emptied, say).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from llmstream.models import Event, EventKind


class ChunkLog(abc.ABC):
    # True if the backend can wake a reader when an event is written (``read_wait``);
    # readers of the others poll ``read``.
    pushes: ClassVar[bool] = False

    @abc.abstractmethod
    def append(self, task_id: str, seq: int, kind: EventKind, data: dict[str, Any]) -> None:
        """Write event ``seq``; SeqConflict if it exists already, LogDiverged unless ``seq``
        is 1 on an empty log or follows the log's last event."""

    @abc.abstractmethod
    def read(self, task_id: str, after: int, limit: int) -> list[Event]:
        """Return up to ``limit`` events with seq > ``after``, in order, without gaps."""

    @abc.abstractmethod
    def last(self, task_id: str) -> Event | None:
        """Return the newest event of the task, or None if it has none."""

    @abc.abstractmethod
    def delete(self, task_id: str) -> None:
        """Remove every event of the task (its conversation was deleted)."""

    @abc.abstractmethod
    def ping(self) -> str:
        """A cheap check that the store answers: a short status, or StoreUnavailable."""

    async def read_wait(
        self, task_id: str, after: int, limit: int, timeout: float
    ) -> tuple[list[Event], bool]:
        """Wait up to ``timeout`` for events after ``after``; return them (as ``read``) and
        whether any event past ``after`` exists at all (False: the wait ran out)."""
        raise NotImplementedError(f"{type(self).__name__} cannot wait; poll read()")

    def read_all(self, task_id: str, page: int = 100) -> list[Event]:
        events: list[Event] = []
        while batch := self.read(task_id, events[-1].seq if events else 0, page):
            events.extend(batch)
            if len(batch) < page:
                break
        return events
