"""Agents on durable streams: function calls and structured output through the pipeline,
with the unmodified `openai` SDK on /v1 (Responses and Chat Completions) and on /chat's own
SSE; a worker killed while a call's arguments stream; the fake model honouring tools as a
real one does (infra/localcloud/fake_openai.py)."""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from localcloud.fake_openai import expected_calls
from localcloud.up import Stack
from tests.chaos import running_tasks
from tests.e2e.conftest import auth
from tests.e2e.v1 import assert_numbered_from, client, model, read, wait_until

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather now",
        "parameters": WEATHER,
    },
    {"type": "function", "name": "get_time", "description": "Time now", "parameters": TIME},
]
CHAT_TOOLS = [
    {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in TOOLS
]


def marked(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:12]}"


def sent_requests(stack: Stack, marker: str) -> list[dict[str, Any]]:
    """The whole chat requests the fake model received whose messages hold ``marker``."""
    fake = stack.urls["openai"].removesuffix("/v1")
    bodies = httpx.get(f"{fake}/fake/requests", timeout=10).json()["requests"]
    return [b for b in bodies if marker in json.dumps(b["messages"])]


def calls_of(events: list[Any]) -> dict[str, dict[str, str]]:
    """The function calls a client holds from its events: by item id, name and arguments
    accumulated from the deltas (as the SDK's stream helper accumulates them)."""
    calls: dict[str, dict[str, str]] = {}
    for e in events:
        if e.type == "response.output_item.added" and e.item.type == "function_call":
            calls[e.item.id] = {"call_id": e.item.call_id, "name": e.item.name, "arguments": ""}
        elif e.type == "response.function_call_arguments.delta":
            calls[e.item_id]["arguments"] += e.delta
    return calls


def test_two_calls_stream_then_their_results_continue_the_conversation(
    local_stack: Stack,
) -> None:
    c = client(local_stack, "tools-user")
    prompt = marked("weather and time please [[fake calls=2]]")
    # GIVEN a request with two tools, streamed
    events = read(
        c.responses.create(model=model(local_stack), input=prompt, tools=TOOLS, stream=True)
    )
    assert_numbered_from(events, 0)
    # THEN two function_call items stream with their arguments, and the response completes
    # with the calls as its output
    held = list(calls_of(events).values())
    (sent,) = sent_requests(local_stack, prompt)
    chat_tools = sent["tools"]
    assert [t["function"]["name"] for t in chat_tools] == ["get_weather", "get_time"]
    want = expected_calls(sent["messages"], chat_tools)
    assert [(h["call_id"], h["name"], h["arguments"]) for h in held] == [
        (w["id"], w["name"], w["arguments"]) for w in want
    ]
    assert json.loads(held[0]["arguments"]) == {"city": "city value", "unit": "celsius"}
    done = events[-1]
    assert done.type == "response.completed" and done.response.status == "completed"
    first = done.response
    # WHEN the client sends both results, continuing by previous_response_id
    outputs = [
        {"type": "function_call_output", "call_id": h["call_id"], "output": f'{{"n": {i}}}'}
        for i, h in enumerate(held)
    ]
    final = read(
        c.responses.create(
            model=model(local_stack),
            input=outputs,  # type: ignore[arg-type]
            previous_response_id=first.id,
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
        )
    )
    # THEN the model was sent the earlier turn's calls, then the results, and answers in text
    text = "".join(e.delta for e in final if e.type == "response.output_text.delta")
    assert text.startswith('Based on get_weather: {"n": 0}; based on get_time: {"n": 1}.')
    assert final[-1].response.status == "completed"
    # AND retrieve shows the calls of the first turn and the text of the second
    stored = c.responses.retrieve(first.id)
    assert [(o.type, o.call_id, o.arguments) for o in stored.output] == [
        ("function_call", h["call_id"], h["arguments"]) for h in held
    ]
    assert c.responses.retrieve(final[-1].response.id).output_text == text


def test_chat_completions_stream_tool_calls_as_the_sdk_accumulates_them(
    local_stack: Stack,
) -> None:
    c = client(local_stack, "tools-user")
    prompt = marked("two calls please [[fake calls=2]]")
    messages: list[Any] = [{"role": "user", "content": prompt}]
    # WHEN a streamed chat completion with two tools is read as the SDK's helper reads it
    with c.chat.completions.stream(
        model=model(local_stack), messages=messages, tools=CHAT_TOOLS
    ) as stream:
        for _ in stream:
            pass
        whole = stream.get_final_completion()
    # THEN the calls arrive whole (delta.tool_calls accumulated), ending with tool_calls
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    (sent,) = sent_requests(local_stack, prompt)
    want = expected_calls(sent["messages"], sent["tools"])
    assert [(k.id, k.function.name, k.function.arguments) for k in calls] == [  # type: ignore[union-attr]
        (w["id"], w["name"], w["arguments"]) for w in want
    ]
    # AND the results sent back as tool messages get a text answer
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": k.id,
                    "type": "function",
                    "function": {
                        "name": k.function.name,  # type: ignore[union-attr]
                        "arguments": k.function.arguments,
                    },
                }  # type: ignore[union-attr]
                for k in calls
            ],
        },
        *({"role": "tool", "tool_call_id": k.id, "content": "21"} for k in calls),
    ]
    answer = c.chat.completions.create(
        model=model(local_stack), messages=messages, tools=CHAT_TOOLS
    )
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.choices[0].message.content or "").startswith("Based on get_weather: 21;")


class Weather(BaseModel):
    city: str
    temperature: int
    windy: bool


def test_structured_output_reaches_the_model_and_parses(local_stack: Stack) -> None:
    c = client(local_stack, "tools-user")
    prompt = marked("the weather as json")
    parsed = c.responses.parse(model=model(local_stack), input=prompt, text_format=Weather)
    assert parsed.output_parsed == Weather(city="city value", temperature=7, windy=True)
    (sent,) = sent_requests(local_stack, prompt)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "Weather"
    completion = c.chat.completions.parse(
        model=model(local_stack),
        messages=[{"role": "user", "content": marked("json again")}],
        response_format=Weather,
    )
    assert completion.choices[0].message.parsed == parsed.output_parsed


@pytest.mark.timeout(300)
def test_a_worker_killed_while_a_call_streams_leaves_the_call_whole_and_once(
    local_stack: Stack,
) -> None:
    c = client(local_stack, "tools-crash")
    # Arguments of 30 pieces at 5 a second: a call streams for 6 s.
    long_args = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "string"} for i in range(10)},
        "required": [f"field_{i}" for i in range(10)],
    }
    tools = [{"type": "function", "name": "fill_form", "parameters": long_args}]
    prompt = marked("fill it [[fake calls=1 tps=5]]")
    stream = c.responses.create(
        model=model(local_stack), input=prompt, tools=tools, background=True, stream=True
    )  # type: ignore[call-overload]
    # GIVEN a client that read the call's start and a few argument pieces, then dropped
    first: list[Any] = []
    for event in stream:
        first.append(event)
        if sum(e.type == "response.function_call_arguments.delta" for e in first) >= 3:
            stream.close()
            break
    rid = first[0].response.id
    # WHEN the worker running it is killed while the arguments stream
    victims = wait_until(lambda: running_tasks(local_stack, busy_for=1.0), "a running worker")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # AND the client resumes after the last event it saw
    rest = read(c.responses.retrieve(rid, stream=True, starting_after=first[-1].sequence_number))
    # THEN it holds the call once, its arguments whole, numbered without a gap
    events = first + rest
    assert_numbered_from(events, 0)
    assert events[-1].type == "response.completed"
    held = list(calls_of(events).values())
    (call,) = held
    args = json.loads(call["arguments"])
    assert args == {f"field_{i}": f"field_{i} value" for i in range(10)}
    stored = c.responses.retrieve(rid)
    assert [(o.call_id, o.arguments) for o in stored.output] == [
        (call["call_id"], call["arguments"])
    ]
    # AND the model was asked again (the retry), with the same conversation
    assert len(sent_requests(local_stack, prompt)) >= 2


def test_chat_streams_calls_as_typed_events_and_takes_their_results(local_stack: Stack) -> None:
    headers = auth(local_stack, "tools-user")
    api = local_stack.urls["api"]
    prompt = marked("call two [[fake calls=2]]")
    body = {"message": prompt, "tools": CHAT_TOOLS}
    accepted = httpx.post(f"{api}/chat", json=body, headers=headers, timeout=10).json()
    events = _sse(accepted["stream_url"])
    kinds = [e.get("type", "chunk") for e in events]
    assert kinds[-1] == "done" and events[-1]["finish_reason"] == "tool_calls"
    assert kinds.count("call") == 2 and "args" in kinds
    calls = events[-1]["calls"]
    status = httpx.get(f"{api}/chat/{accepted['task_id']}", headers=headers, timeout=10).json()
    assert status["calls"] == calls
    results = [{"call_id": k["id"], "output": "ok"} for k in calls]
    again = {"session_id": accepted["session_id"], "tool_results": results, "tools": CHAT_TOOLS}
    second = httpx.post(f"{api}/chat", json=again, headers=headers, timeout=10).json()
    text = "".join(e.get("chunk", "") for e in _sse(second["stream_url"]))
    assert text.startswith("Based on get_weather: ok; based on get_time: ok.")


def _sse(url: str) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("GET", url, timeout=httpx.Timeout(30, read=60)) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
                if events[-1].get("type") in ("done", "error", "cancelled"):
                    break
    return events
