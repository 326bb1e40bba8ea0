"""The fold of a chunk log into OpenAI's output items and events (v1/replay.py,
v1/responses.py, v1/completions.py): what a client is shown across a worker's restart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmstream.models import Event
from llmstream.tasks import Task
from llmstream.v1.completions import CompletionChunks, completion_object
from llmstream.v1.replay import ItemAdded, ItemDone, Replay, TextDelta
from llmstream.v1.responses import ResponseEvents, response_object

USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def log(*entries: tuple[str, ...] | str) -> list[Event]:
    """Events from ("c", text), ("call", id, name) and ("a", arguments) entries, and bare
    kinds ("reset", "done", "calls_done", ...)."""
    events = []
    for seq, entry in enumerate(entries, start=1):
        if isinstance(entry, tuple) and entry[0] == "call":
            events.append(Event(seq, "call", {"type": "call", "id": entry[1], "name": entry[2]}))
        elif isinstance(entry, tuple) and entry[0] == "a":
            events.append(Event(seq, "args", {"type": "args", "delta": entry[1]}))
        elif isinstance(entry, tuple):
            events.append(Event(seq, "chunk", {"chunk": entry[1]}))
        elif entry == "calls_done":
            data = {"type": "done", "usage": USAGE, "finish_reason": "tool_calls"}
            events.append(Event(seq, "done", data))
        elif entry == "done":
            events.append(
                Event(seq, "done", {"type": "done", "usage": USAGE, "finish_reason": "stop"})
            )
        elif entry == "error":
            events.append(Event(seq, "error", {"type": "error", "message": "model error: 500"}))
        else:
            events.append(Event(seq, entry, {"type": entry}))  # type: ignore[arg-type]
    return events


def fold(events: list[Event]) -> tuple[Replay, list[Any]]:
    replay = Replay()
    ops = [op for event in events for op in replay.feed(event)]
    return replay, ops


SAME_AGAIN = log(("c", "Hello "), ("c", "wor"), "reset", ("c", "Hel"), ("c", "lo world"), "done")
SOMETHING_ELSE = log(("c", "Hello "), ("c", "wor"), "reset", ("c", "Hi there"), "done")
SHORTER = log(("c", "Hello world"), "reset", ("c", "Hello"), "done")
TWO_CALLS = log(
    ("call", "c1", "get_weather"),
    ("a", '{"city":'),
    ("a", '"Oslo"}'),
    ("call", "c2", "get_time"),
    ("a", "{}"),
    "calls_done",
)
CALL_RETOLD = log(
    ("call", "c1", "get_weather"),
    ("a", '{"ci'),
    "reset",
    ("call", "c1", "get_weather"),
    ("a", '{"city":"Oslo"}'),
    ("call", "c2", "get_time"),
    ("a", "{}"),
    "calls_done",
)
CALL_CHANGED = log(
    ("call", "c1", "get_weather"),
    ("a", '{"ci'),
    "reset",
    ("call", "c9", "get_weather"),
    ("a", '{"city":"Oslo"}'),
    "calls_done",
)
LOGS = [
    TWO_CALLS,
    CALL_RETOLD,
    CALL_CHANGED,
    log(("c", "Let me look."), ("call", "c1", "f"), ("a", "{}"), "reset", ("c", "Let me"), "done"),
    SAME_AGAIN,
    SOMETHING_ELSE,
    SHORTER,
    log(("c", "a"), "reset", "reset", ("c", "ab"), "done"),
    log(("c", "x"), "error"),
    log("cancelled"),
    log("done"),
]


def test_a_retry_that_says_the_same_again_continues_the_item_unseen() -> None:
    replay, ops = fold(SAME_AGAIN)
    assert [op for op in ops if isinstance(op, TextDelta)] == [
        TextDelta(0, "Hello "),
        TextDelta(0, "wor"),
        TextDelta(0, "ld"),
    ]
    assert [(i.text, i.status) for i in replay.items] == [("Hello world", "completed")]


def test_a_retry_that_says_something_else_starts_a_new_item_and_keeps_the_shown_one() -> None:
    replay, ops = fold(SOMETHING_ELSE)
    assert [(i.text, i.status) for i in replay.items] == [
        ("Hello wor", "incomplete"),
        ("Hi there", "completed"),
    ]
    assert ItemDone(0, "incomplete") in ops and ItemAdded(1) in ops


def test_a_retry_that_ends_saying_less_is_another_answer() -> None:
    replay, _ = fold(SHORTER)
    assert [(i.text, i.status) for i in replay.items] == [
        ("Hello world", "incomplete"),
        ("Hello", "completed"),
    ]


@pytest.mark.parametrize("events", LOGS)
def test_what_a_prefix_of_the_log_shows_is_a_prefix_of_what_the_whole_log_shows(
    events: list[Event],
) -> None:
    _, whole = fold(events)
    for cut in range(len(events) + 1):
        _, part = fold(events[:cut])
        assert whole[: len(part)] == part


def _events(task: Task, events: list[Event], after: int | None = None) -> list[dict[str, Any]]:
    render = ResponseEvents(task, after)
    sse = render.opening() + [s for e in events for s in render(e)]
    return [json.loads(s.data) for s in sse]


@pytest.mark.parametrize("events", LOGS)
def test_response_events_are_numbered_from_0_and_resume_after_any_number(
    events: list[Event],
) -> None:
    task = Task("t" * 32, "s", "running", "m", "hi", background=True)
    every = _events(task, events)
    assert [e["sequence_number"] for e in every] == list(range(len(every)))
    assert every[0]["type"] == "response.created"
    assert every[0]["response"]["status"] == "queued"
    for n in range(-1, len(every)):
        assert _events(task, events, n) == every[n + 1 :]
    # What the deltas showed is what the stored response holds.
    replay, _ = fold(events)
    stored = response_object(task, replay)
    for delta, kind in (
        ("response.output_text.delta", "message"),
        ("response.function_call_arguments.delta", "function_call"),
    ):
        shown = "".join(e["delta"] for e in every if e["type"] == delta)
        items = [item for item in stored["output"] if item["type"] == kind]
        if kind == "message":
            held = "".join(p["text"] for item in items for p in item["content"])
        else:
            held = "".join(item["arguments"] for item in items)
        assert shown == held
    assert every[-1]["response"] == stored


def test_the_last_event_names_how_the_response_ended() -> None:
    task = Task("t" * 32, "s", "running", "m", "hi")
    assert _events(task, SAME_AGAIN)[-1]["type"] == "response.completed"
    assert _events(task, log(("c", "x"), "error"))[-1]["type"] == "response.failed"
    cancelled = _events(task, log(("c", "x"), "cancelled"))[-1]
    assert cancelled["type"] == "response.incomplete"
    assert cancelled["response"]["status"] == "cancelled"
    usage = _events(task, SAME_AGAIN)[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 7, 12)


def _chunks(events: list[Event], usage: bool = True) -> list[Any]:
    task = Task("t" * 32, "s", "running", "m", "hi")
    render = CompletionChunks(task, include_usage=usage)
    return [s.data if s.data == "[DONE]" else json.loads(s.data) for e in events for s in render(e)]


def test_chat_completion_chunks_carry_the_text_then_the_reason_the_usage_and_done() -> None:
    chunks = _chunks(SAME_AGAIN)
    assert chunks[-1] == "[DONE]"
    body = chunks[:-1]
    assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in body if c["choices"])
    assert text == "Hello world"
    assert body[-2]["choices"][0]["finish_reason"] == "stop"
    assert body[-1]["choices"] == [] and body[-1]["usage"]["total_tokens"] == 12


def test_a_chat_completion_stream_cannot_take_text_back_so_a_changed_retry_is_an_error() -> None:
    chunks = _chunks(SOMETHING_ELSE)
    assert chunks[-1] == "[DONE]" and "error" in chunks[-2]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2])
    assert text == "Hello wor"  # nothing after what it had shown
    replay, _ = fold(SOMETHING_ELSE)
    whole = completion_object(Task("t" * 32, "s", "done", "m", "hi"), replay)
    assert whole is not None and whole["choices"][0]["message"]["content"] == "Hi there"


def test_calls_are_items_with_their_arguments_whole_and_once_across_a_retold_restart() -> None:
    for events in (TWO_CALLS, CALL_RETOLD):
        replay, _ = fold(events)
        assert [(i.kind, i.call_id, i.name, i.text, i.status) for i in replay.items] == [
            ("function_call", "c1", "get_weather", '{"city":"Oslo"}', "completed"),
            ("function_call", "c2", "get_time", "{}", "completed"),
        ]
        shown = _events(Task("t" * 32, "s", "running", "m", "hi"), events)
        deltas = [
            e["delta"] for e in shown if e["type"] == "response.function_call_arguments.delta"
        ]
        assert "".join(deltas) == '{"city":"Oslo"}{}'
        added = [e["item"] for e in shown if e["type"] == "response.output_item.added"]
        assert [(a["type"], a["call_id"], a["arguments"]) for a in added] == [
            ("function_call", "c1", ""),
            ("function_call", "c2", ""),
        ]


def test_a_retry_that_calls_otherwise_keeps_the_shown_call_incomplete() -> None:
    replay, _ = fold(CALL_CHANGED)
    assert [(i.call_id, i.text, i.status) for i in replay.items] == [
        ("c1", '{"ci', "incomplete"),
        ("c9", '{"city":"Oslo"}', "completed"),
    ]


def test_chat_completion_chunks_stream_tool_calls_as_the_sdk_accumulates_them() -> None:
    chunks = _chunks(TWO_CALLS)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    calls: dict[int, dict[str, str]] = {}
    for c in chunks[:-1]:
        for choice in c["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                got = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                got["id"] += call.get("id") or ""
                got["name"] += (call.get("function") or {}).get("name") or ""
                got["arguments"] += (call.get("function") or {}).get("arguments") or ""
    assert calls == {
        0: {"id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        1: {"id": "c2", "name": "get_time", "arguments": "{}"},
    }
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    ended = _events(Task("t" * 32, "s", "running", "m", "hi"), TWO_CALLS)[-1]
    assert (ended["type"], ended["response"]["status"]) == ("response.completed", "completed")
    replay, _ = fold(TWO_CALLS)
    whole = completion_object(Task("t" * 32, "s", "done", "m", "hi"), replay)
    assert whole is not None
    message = whole["choices"][0]["message"]
    assert message["content"] is None
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"city":"Oslo"}', "{}"]
