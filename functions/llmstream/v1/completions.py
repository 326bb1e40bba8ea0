"""A task as a Chat Completions answer: the ``chat.completion`` object, or its chunk log as
``chat.completion.chunk`` events ending in ``data: [DONE]``.

A Chat Completions stream has one text (and its tool calls) and no way to take any of it
back, so a worker retry that says something else than the stream already showed
(replay.py: Restarted) ends the stream with an error event, which the SDKs raise; a retry that says
the same again (a deterministic model) goes on unseen, as in the Responses API.
"""

from __future__ import annotations

import json
from typing import Any

from sse_starlette import ServerSentEvent

from llmstream.models import Event
from llmstream.tasks import Task
from llmstream.v1.replay import Finished, Item, ItemAdded, Op, Replay, Restarted, TextDelta


def completion_id(task_id: str) -> str:
    return f"chatcmpl-{task_id}"


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model's usage as Chat Completions names it (the worker keeps it so)."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens", prompt + completion)),
    }


def _error(message: str, status: int | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status and 400 <= status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": None, "code": None}
    return {"error": {**error, "status": status} if status else error}


def _call(index: int, item: Item) -> dict[str, Any]:
    return {
        "index": index,
        "id": item.call_id,
        "type": "function",
        "function": {"name": item.name, "arguments": item.text},
    }


def completion_object(task: Task, replay: Replay) -> dict[str, Any] | None:
    """The finished answer as a ``chat.completion``; an error body if it failed; None while
    it runs. It is the latest attempt's answer: its text and its function calls."""
    end = replay.finished
    if end is None:
        return None
    if end.kind != "done":
        return _error(end.message or f"the answer ended {end.kind}", end.model_status)
    items = replay.latest
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(i.text for i in items if i.kind == "message") or None,
        "refusal": None,
    }
    calls = [i for i in items if i.kind == "function_call"]
    if calls:
        message["tool_calls"] = [
            {k: v for k, v in _call(n, c).items() if k != "index"} for n, c in enumerate(calls)
        ]
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": completion_id(task.task_id),
        "object": "chat.completion",
        "created": int(task.created_at),
        "model": task.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": end.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_of(end.usage),
    }


class CompletionChunks:
    """The ``chat.completion.chunk`` events of one task, from its log's events."""

    def __init__(self, task: Task, *, include_usage: bool) -> None:
        self.task = task
        self.replay = Replay()
        self.include_usage = include_usage
        self._opened = False
        self._restarted = False
        self._calls: dict[int, int] = {}  # item index -> tool_calls index

    def __call__(self, event: Event) -> list[ServerSentEvent]:
        """The events one log event adds (streaming.Render)."""
        out: list[dict[str, Any] | str] = []
        for op in self.replay.feed(event):
            out += self._chunks(op)
        return [
            ServerSentEvent(data=o if isinstance(o, str) else json.dumps(o, ensure_ascii=False))
            for o in out
        ]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": completion_id(self.task.task_id),
            "object": "chat.completion.chunk",
            "created": int(self.task.created_at),
            "model": self.task.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _chunks(self, op: Op) -> list[dict[str, Any] | str]:
        if self._restarted:
            return []
        if isinstance(op, Restarted):
            self._restarted = True
            return [
                _error(
                    "the answer was restarted after a worker failure and said something else "
                    "than this stream showed; ask again, or use the Responses API, whose "
                    "streams keep both"
                ),
                "[DONE]",
            ]
        if isinstance(op, ItemAdded):
            return self._added(op.index)
        if isinstance(op, TextDelta):
            if op.index in self._calls:
                call = {"index": self._calls[op.index], "function": {"arguments": op.text}}
                return [self._chunk({"tool_calls": [call]})]
            return [self._chunk({"content": op.text})]
        if isinstance(op, Finished):
            return self._ending(op)
        return []

    def _added(self, index: int) -> list[dict[str, Any] | str]:
        item = self.replay.items[index]
        out: list[dict[str, Any] | str] = []
        if not self._opened:
            self._opened = True
            first = "" if item.kind == "message" else None
            out.append(self._chunk({"role": "assistant", "content": first}))
        if item.kind == "function_call":
            self._calls[index] = len(self._calls)
            fresh = Item("function_call", "", "in_progress", item.call_id, item.name)
            out.append(self._chunk({"tool_calls": [_call(self._calls[index], fresh)]}))
        return out

    def _ending(self, op: Finished) -> list[dict[str, Any] | str]:
        if op.kind != "done":
            return [_error(op.message or f"the answer ended {op.kind}"), "[DONE]"]
        out: list[dict[str, Any] | str] = [self._chunk({}, op.finish_reason or "stop")]
        if self.include_usage:
            last = self._chunk({})
            last["choices"] = []
            last["usage"] = usage_of(op.usage)
            out.append(last)
        return [*out, "[DONE]"]
