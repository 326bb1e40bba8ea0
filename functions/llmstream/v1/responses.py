"""A task as OpenAI's Response object, and its chunk log as the Responses API's events.

Both come from one fold of the log (replay.py), so the Response a client retrieves holds
exactly the text its events showed. Event numbers count from 0 (``response.created``) over
the whole log, the same on every read, which is what ``starting_after`` resumes by.
"""

from __future__ import annotations

import json
from typing import Any

from sse_starlette import ServerSentEvent

from llmstream.models import Event
from llmstream.tasks import Task
from llmstream.tool_specs import responses_choice, responses_format, responses_tools
from llmstream.v1.completions import usage_of as chat_usage
from llmstream.v1.replay import (
    Finished,
    Item,
    ItemAdded,
    ItemDone,
    Op,
    Replay,
    Restarted,
    Started,
    TextDelta,
)

_ROW_STATUS = {
    "queued": "queued",
    "waiting": "queued",
    "running": "in_progress",
    "done": "completed",
    "error": "failed",
    "cancelled": "cancelled",
}


def response_id(task_id: str) -> str:
    return f"resp_{task_id}"


def status_of(task: Task, replay: Replay) -> str:
    """The Response's status: the log's ending if it has one, else the row's."""
    end = replay.finished
    if end is None:
        return _ROW_STATUS[task.status]
    if end.kind == "done":
        # max_tokens cut it (length) or a filter did: incomplete; stop and tool_calls end it
        return "incomplete" if end.finish_reason in ("length", "content_filter") else "completed"
    return "failed" if end.kind == "error" else "cancelled"


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model's usage as the Responses API names it."""
    counts = chat_usage(usage)
    if counts is None:
        return None
    return {
        "input_tokens": counts["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": counts["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counts["total_tokens"],
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item_id(task: Task, index: int, item: Item) -> str:
    prefix = "fc" if item.kind == "function_call" else "msg"
    return f"{prefix}_{task.task_id}_{index}"


def _item(task: Task, index: int, item: Item, *, fresh: bool = False) -> dict[str, Any]:
    """An output item as a Response holds it (``fresh``: as it was added, nothing in it)."""
    status = "in_progress" if fresh else item.status
    if item.kind == "function_call":
        return {
            "id": _item_id(task, index, item),
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": "" if fresh else item.text,
            "status": status,
        }
    return {
        "id": _item_id(task, index, item),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [] if fresh else [_part(item.text)],
    }


def response_object(
    task: Task, replay: Replay, status: str | None = None, *, output: bool = True
) -> dict[str, Any]:
    """The task as a Response (``status`` and no output: a snapshot for an early event)."""
    end = replay.finished
    status = status or status_of(task, replay)
    error = None
    if status == "failed":
        message = (end.message if end else None) or task.error or "the answer failed"
        error = {"code": "server_error", "message": message}
    incomplete = None
    if status == "incomplete":
        reason = end.finish_reason if end else None
        incomplete = {
            "reason": "content_filter" if reason == "content_filter" else "max_output_tokens"
        }
    return {
        "id": response_id(task.task_id),
        "object": "response",
        "created_at": int(task.created_at),
        "status": status,
        "background": task.background,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": task.system,
        "max_output_tokens": task.max_tokens,
        "metadata": json.loads(task.metadata) if task.metadata else {},
        "model": task.model,
        "output": [_item(task, i, item) for i, item in enumerate(replay.items)] if output else [],
        "parallel_tool_calls": task.parallel_tool_calls is not False,
        "previous_response_id": task.previous_response_id,
        "store": task.store,
        "temperature": task.temperature,
        "text": {"format": responses_format(task.response_format)},
        "tool_choice": responses_choice(task.tool_choice),
        "tools": responses_tools(task.tools),
        "top_p": task.top_p,
        "truncation": "disabled",
        "usage": usage_of(end.usage if end else task.usage),
        "user": None,
    }


class ResponseEvents:
    """The Responses API's events of one task, numbered, from its log's events."""

    def __init__(self, task: Task, starting_after: int | None = None) -> None:
        self.task = task
        self.replay = Replay()
        self.starting_after = -1 if starting_after is None else starting_after
        self._next = 0

    def opening(self) -> list[ServerSentEvent]:
        """``response.created``: the response as it was accepted."""
        first = "queued" if self.task.background else "in_progress"
        snapshot = response_object(self.task, self.replay, first, output=False)
        return self._emit([{"type": "response.created", "response": snapshot}])

    def __call__(self, event: Event) -> list[ServerSentEvent]:
        """The events one log event adds (streaming.Render)."""
        out: list[dict[str, Any]] = []
        for op in self.replay.feed(event):
            out += self._events(op)
        return self._emit(out)

    def _events(self, op: Op) -> list[dict[str, Any]]:
        task = self.task
        if isinstance(op, Started):
            snapshot = response_object(task, self.replay, "in_progress", output=False)
            return [{"type": "response.in_progress", "response": snapshot}]
        if isinstance(op, ItemAdded):
            return self._added(op.index)
        if isinstance(op, TextDelta):
            item = self.replay.items[op.index]
            where = {"item_id": _item_id(task, op.index, item), "output_index": op.index}
            if item.kind == "function_call":
                return [
                    {"type": "response.function_call_arguments.delta", **where, "delta": op.text}
                ]
            return [
                {
                    "type": "response.output_text.delta",
                    **where,
                    "content_index": 0,
                    "delta": op.text,
                    "logprobs": [],
                }
            ]
        if isinstance(op, ItemDone):
            return self._done(op.index)
        if isinstance(op, Restarted):
            return []  # the items say it: one ends incomplete, the next ones follow
        return [self._ending(op)]

    def _added(self, index: int) -> list[dict[str, Any]]:
        item = self.replay.items[index]
        added = {
            "type": "response.output_item.added",
            "output_index": index,
            "item": _item(self.task, index, item, fresh=True),
        }
        if item.kind == "function_call":
            return [added]
        where = {"item_id": _item_id(self.task, index, item), "output_index": index}
        return [
            added,
            {"type": "response.content_part.added", **where, "content_index": 0, "part": _part("")},
        ]

    def _done(self, index: int) -> list[dict[str, Any]]:
        item = self.replay.items[index]
        where = {"item_id": _item_id(self.task, index, item), "output_index": index}
        done = {
            "type": "response.output_item.done",
            "output_index": index,
            "item": _item(self.task, index, item),
        }
        if item.kind == "function_call":
            return [
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    "name": item.name,
                    "arguments": item.text,
                },
                done,
            ]
        return [
            {
                "type": "response.output_text.done",
                **where,
                "content_index": 0,
                "text": item.text,
                "logprobs": [],
            },
            {
                "type": "response.content_part.done",
                **where,
                "content_index": 0,
                "part": _part(item.text),
            },
            done,
        ]

    def _ending(self, op: Finished) -> dict[str, Any]:
        response = response_object(self.task, self.replay)
        kind = {
            "completed": "response.completed",
            "failed": "response.failed",
            # OpenAI's streams have no event for a cancel: the response ends incomplete,
            # its status says why.
            "cancelled": "response.incomplete",
            "incomplete": "response.incomplete",
        }[response["status"]]
        return {"type": kind, "response": response}

    def _emit(self, events: list[dict[str, Any]]) -> list[ServerSentEvent]:
        sse: list[ServerSentEvent] = []
        for event in events:
            number, self._next = self._next, self._next + 1
            if number <= self.starting_after:
                continue
            data = {"type": event["type"], "sequence_number": number, **event}
            sse.append(
                ServerSentEvent(
                    event=event["type"],
                    data=json.dumps(data, separators=(",", ":"), ensure_ascii=False),
                )
            )
        return sse
