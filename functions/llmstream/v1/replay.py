"""A task's chunk log as an answer's output items: what an OpenAI client is shown.

The chunk log may restart an answer: a worker that died mid-answer is replaced by a new
attempt, which writes a ``reset`` and then the whole answer again. A /chat client clears its
text on ``reset``; an OpenAI client cannot (its events only ever add), so the log is folded
into output items here, the same way for every reader, live or replaying, so that sequence
numbers and text never differ between two reads of one response:

- Text goes into the current message item.
- After a ``reset``, the new attempt's text is held back while it repeats what the item
  already shows (a deterministic model, temperature 0, says the same again): once it goes
  past it, only the new part is shown, and the client never sees the restart.
- If it says something else, the item the client holds ends ``incomplete`` and a new item
  starts with the new attempt's text. Nothing a client was shown is ever taken back, and
  the stored response (this same fold over the whole log) holds exactly what it was shown.

``Replay.feed`` is incremental and depends only on the events fed so far: the ops for a log
prefix are a prefix of the ops for the whole log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmstream.models import Event

ItemStatus = Literal["in_progress", "completed", "incomplete"]


@dataclass(frozen=True)
class ItemAdded:
    index: int


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True)
class ItemDone:
    index: int
    status: ItemStatus


@dataclass(frozen=True)
class Started:
    """The first sign of work in the log (the answer is in progress)."""


@dataclass(frozen=True)
class Finished:
    """The log's terminal event: ``done`` (``finish_reason`` "stop" or "length"), ``error``
    (``message``) or ``cancelled``."""

    kind: str
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    message: str | None = None


Op = Started | ItemAdded | TextDelta | ItemDone | Finished


@dataclass
class Item:
    text: str = ""
    status: ItemStatus = "in_progress"


@dataclass
class Replay:
    """The fold: feed it the log's events in order; it returns the ops each one adds and
    keeps the items so far (``items``) and the ending (``finished``)."""

    items: list[Item] = field(default_factory=list)
    finished: Finished | None = None
    started: bool = False
    # After a reset: the new attempt's text while it may still be repeating the item's.
    _retold: str | None = None

    @property
    def text(self) -> str:
        return "".join(item.text for item in self.items)

    def feed(self, event: Event) -> list[Op]:
        if self.finished is not None:
            return []
        ops: list[Op] = []
        if not self.started and event.kind in ("chunk", "reset"):
            self.started = True
            ops.append(Started())
        if event.kind == "chunk":
            ops += self._chunk(str(event.data.get("chunk", "")))
        elif event.kind == "reset":
            if self.items and self.items[-1].text:
                self._retold = ""  # compare the new attempt with what is shown
        elif event.terminal:
            ops += self._finish(event)
        return ops

    def _chunk(self, text: str) -> list[Op]:
        if self._retold is None:
            return self._add(text)
        shown = self.items[-1].text
        retold = self._retold + text
        if shown.startswith(retold):
            self._retold = retold  # still saying what the client has: hold it back
            return []
        self._retold = None
        if retold.startswith(shown):
            return self._add(retold[len(shown) :])  # past it: only the new part
        return [*self._close("incomplete"), *self._add(retold)]  # it said something else

    def _add(self, text: str) -> list[Op]:
        ops: list[Op] = []
        if not self.items or self.items[-1].status != "in_progress":
            self.items.append(Item())
            ops.append(ItemAdded(len(self.items) - 1))
        if text:
            self.items[-1].text += text
            ops.append(TextDelta(len(self.items) - 1, text))
        return ops

    def _close(self, status: ItemStatus) -> list[Op]:
        if not self.items or self.items[-1].status != "in_progress":
            return []
        self.items[-1].status = status
        return [ItemDone(len(self.items) - 1, status)]

    def _finish(self, event: Event) -> list[Op]:
        data = event.data
        ops: list[Op] = []
        if event.kind == "done":
            reason = data.get("finish_reason") or "stop"
            if self._retold is not None:
                # The new attempt ended saying less than the item shows: its answer is
                # another one. The shown item stays as the client saw it.
                retold, self._retold = self._retold, None
                ops += [*self._close("incomplete"), *self._add(retold)]
            elif not self.items or self.items[-1].status != "in_progress":
                ops += self._add("")  # an empty answer is still a message
            ops += self._close("completed" if reason == "stop" else "incomplete")
            self.finished = Finished("done", data.get("usage"), reason)
        else:
            self._retold = None
            ops += self._close("incomplete")
            message = data.get("message") if event.kind == "error" else None
            self.finished = Finished(event.kind, message=message)
        return [*ops, self.finished]
