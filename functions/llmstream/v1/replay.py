"""A task's chunk log as an answer's output items: what an OpenAI client is shown.

An answer is a run of items: message text (``chunk`` events) and function calls (a ``call``
event with its id and name, then its arguments in ``args`` events; a call ends where the
next item starts or the answer ends).

The chunk log may restart an answer: a worker that died mid-answer is replaced by a new
attempt, which writes a ``reset`` and then the whole answer again. A /chat client clears its
answer on ``reset``; an OpenAI client cannot (its events only ever add), so the log is
folded into output items here, the same way for every reader, live or replaying, so that
sequence numbers, text and calls never differ between two reads of one response:

- After a ``reset``, the new attempt's output is held back while it repeats what the client
  was shown (a deterministic model, temperature 0, says the same again and makes the same
  calls): once it goes past it, only the new part is shown, and the client never sees the
  restart (a call's arguments arrive whole and once).
- If it says something else, the open item the client holds ends ``incomplete`` and the new
  attempt's output follows as new items (``Restarted`` marks the place). Nothing a client
  was shown is ever taken back, and the stored response (this same fold over the whole log)
  holds exactly what it was shown.

``Replay.feed`` is incremental and depends only on the events fed so far: the ops for a log
prefix are a prefix of the ops for the whole log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmstream.models import Event

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ItemKind = Literal["message", "function_call"]


@dataclass(frozen=True)
class ItemAdded:
    index: int


@dataclass(frozen=True)
class TextDelta:
    """More of an item: a message's text, or a function call's arguments."""

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
class Restarted:
    """A new attempt said something else than the client was shown: its output follows as
    new items."""


@dataclass(frozen=True)
class Finished:
    """The log's terminal event: ``done`` (``finish_reason`` "stop", "length" or
    "tool_calls"), ``error`` (``message``) or ``cancelled``."""

    kind: str
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    message: str | None = None
    model_status: int | None = None  # the model API refused the request with this status


Op = Started | Restarted | ItemAdded | TextDelta | ItemDone | Finished


@dataclass
class Item:
    kind: ItemKind = "message"
    text: str = ""  # a message's text, or a call's arguments
    status: ItemStatus = "in_progress"
    call_id: str = ""
    name: str = ""


# One step of an attempt's output: ("text", s), ("call", "id\nname") or ("args", s).
Atom = tuple[str, str]


def _merged(atoms: list[Atom], atom: Atom) -> list[Atom]:
    """``atoms`` and one more, text (or arguments) joined to the text before it."""
    kind, value = atom
    if atoms and kind != "call" and atoms[-1][0] == kind:
        return [*atoms[:-1], (kind, atoms[-1][1] + value)]
    return [*atoms, atom]


def _prefix(short: list[Atom], long: list[Atom]) -> bool:
    """True if ``short`` is how ``long`` began (its last text may stop midway)."""
    if len(short) > len(long):
        return False
    for i, (kind, value) in enumerate(short):
        other_kind, other = long[i]
        if kind != other_kind:
            return False
        last = i == len(short) - 1
        if kind == "call" or not last:
            if value != other:
                return False
        elif not other.startswith(value):
            return False
    return True


def _beyond(shown: list[Atom], retold: list[Atom]) -> list[Atom]:
    """What ``retold`` says past ``shown`` (which is how it began)."""
    if not shown:
        return list(retold)
    k = len(shown) - 1
    extra: list[Atom] = []
    kind, value = retold[k]
    if kind != "call" and len(value) > len(shown[k][1]):
        extra.append((kind, value[len(shown[k][1]) :]))
    return [*extra, *retold[k + 1 :]]


@dataclass
class Replay:
    """The fold: feed it the log's events in order; it returns the ops each one adds and
    keeps the items so far (``items``) and the ending (``finished``)."""

    items: list[Item] = field(default_factory=list)
    finished: Finished | None = None
    started: bool = False
    _shown: list[Atom] = field(default_factory=list)  # the current attempt's, as shown
    _base: int = 0  # its first item
    _retold: list[Atom] | None = None  # after a reset: the new attempt's, held back

    @property
    def text(self) -> str:
        return "".join(item.text for item in self.items if item.kind == "message")

    @property
    def latest(self) -> list[Item]:
        """The items of the latest attempt (all of them, unless one said something else)."""
        return self.items[self._base :]

    def feed(self, event: Event) -> list[Op]:
        if self.finished is not None:
            return []
        ops: list[Op] = []
        if not self.started and event.kind in ("chunk", "reset", "call", "args"):
            self.started = True
            ops.append(Started())
        atom = _atom(event)
        if atom is not None:
            ops += self._said(atom)
        elif event.kind == "reset":
            if self._shown:
                self._retold = []  # compare the new attempt with what is shown
        elif event.terminal:
            ops += self._finish(event)
        return ops

    def _said(self, atom: Atom) -> list[Op]:
        if self._retold is None:
            self._shown = _merged(self._shown, atom)
            return self._apply(atom)
        retold = _merged(self._retold, atom)
        if _prefix(self._shown, retold):  # past what was shown (or just as far)
            extra, self._retold = _beyond(self._shown, retold), None
            self._shown = retold
            return [op for a in extra for op in self._apply(a)]
        if _prefix(retold, self._shown):
            self._retold = retold  # still saying what the client has: hold it back
            return []
        return self._restart(retold)  # it said something else

    def _restart(self, retold: list[Atom]) -> list[Op]:
        self._retold = None
        ops: list[Op] = [Restarted(), *self._close("incomplete")]
        self._base, self._shown = len(self.items), []
        for atom in retold:
            self._shown = _merged(self._shown, atom)
            ops += self._apply(atom)
        return ops

    def _apply(self, atom: Atom) -> list[Op]:
        kind, value = atom
        if kind == "call":
            call_id, _, name = value.partition("\n")
            return [
                *self._close("completed"),
                *self._open(Item("function_call", "", "in_progress", call_id, name)),
            ]
        ops: list[Op] = []
        want: ItemKind = "message" if kind == "text" else "function_call"
        current = self._open_item()
        if current is None or current.kind != want:
            if want == "function_call":
                return []  # arguments with no call open: nothing to add them to
            ops += [*self._close("completed"), *self._open(Item())]
        if value:
            self.items[-1].text += value
            ops.append(TextDelta(len(self.items) - 1, value))
        return ops

    def _open_item(self) -> Item | None:
        item = self.items[-1] if len(self.items) > self._base else None
        return item if item is not None and item.status == "in_progress" else None

    def _open(self, item: Item) -> list[Op]:
        self.items.append(item)
        return [ItemAdded(len(self.items) - 1)]

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
                # The new attempt ended saying less than the client was shown: its answer
                # is another one. What was shown stays as the client saw it.
                ops += self._restart(self._retold)
            if len(self.items) == self._base:
                ops += self._open(Item())  # an empty answer is still a message
            ops += self._close(
                "incomplete" if reason in ("length", "content_filter") else "completed"
            )
            self.finished = Finished("done", data.get("usage"), reason)
        else:
            self._retold = None
            ops += self._close("incomplete")
            message = data.get("message") if event.kind == "error" else None
            self.finished = Finished(
                event.kind, message=message, model_status=data.get("model_status")
            )
        return [*ops, self.finished]


def _atom(event: Event) -> Atom | None:
    data = event.data
    if event.kind == "chunk":
        return ("text", str(data.get("chunk", "")))
    if event.kind == "call":
        return ("call", f"{data.get('id', '')}\n{data.get('name', '')}")
    if event.kind == "args":
        return ("args", str(data.get("delta", "")))
    return None
