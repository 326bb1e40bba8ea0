from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, InternalServerError, OpenAI
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from pydantic import BaseModel

from localcloud.fake_openai import (
    MESSAGE_OVERHEAD_TOKENS,
    Behaviour,
    answer_tokens,
    create_app,
    expected_answer,
    expected_calls,
    parse_directive,
    prompt_tokens,
    text_tokens,
)
from localcloud.fake_tools import fill

pytestmark = pytest.mark.unit
HI: list[Any] = [{"role": "user", "content": "hi there"}]


def test_answer_is_deterministic_and_derived_from_the_prompt() -> None:
    assert expected_answer(HI) == expected_answer(list(HI))
    assert expected_answer(HI) != expected_answer([{"role": "user", "content": "other"}])
    assert expected_answer(HI).startswith('You asked: "hi there".')


def test_length_and_max_tokens() -> None:
    tokens, reason = answer_tokens(HI, None, Behaviour(tokens=30))
    assert len(tokens) == 30 and reason == "stop"
    tokens, reason = answer_tokens(HI, 7, Behaviour(tokens=30))
    assert len(tokens) == 7 and reason == "length"


def test_directive_overrides_behaviour() -> None:
    b = parse_directive("x [[fake tokens=5 tps=10 ttft_ms=0 status=429]]", Behaviour())
    assert (b.tokens, b.tps, b.ttft_ms, b.status) == (5, 10.0, 0.0, 429)
    assert parse_directive("no directive", Behaviour()) == Behaviour()


@pytest.fixture
def http() -> Iterator[TestClient]:
    """The fake server in process, over HTTP."""
    with TestClient(create_app(Behaviour(tokens=12, ttft_ms=0, tps=1e6))) as client:
        yield client


@pytest.fixture
def model(http: TestClient) -> OpenAI:
    """The fake server through the real SDK (as the functions call it)."""
    return OpenAI(api_key="sk-test", base_url="http://fake/v1", http_client=http, max_retries=0)


def test_embeddings_usage_counts_about_four_characters_a_token(model: OpenAI) -> None:
    # GIVEN inputs of 1, 8 and 4,001 characters
    texts = ["a", "12345678", "x" * 4001]
    # WHEN they are embedded in one call
    usage = model.embeddings.create(model="m", input=texts).usage
    # THEN each counts ~4 characters a token, at least 1: not one token an input
    assert usage.prompt_tokens == usage.total_tokens == 1 + 2 + 1001
    assert usage.total_tokens == sum(text_tokens(t) for t in texts)


def test_chat_usage_counts_the_prompts_characters_and_the_answers_tokens(model: OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "s" * 40},
        {"role": "user", "content": "u" * 401},
    ]
    reply = model.chat.completions.create(model="m", messages=messages)
    assert reply.usage is not None
    # 10 + 101 tokens of text, and 3 a message for its framing
    assert reply.usage.prompt_tokens == 10 + 101 + 2 * MESSAGE_OVERHEAD_TOKENS
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_a_directive_in_an_embeddings_input_fails_its_batch(model: OpenAI) -> None:
    with pytest.raises(InternalServerError):
        model.embeddings.create(model="m", input=["fine", "boom [[fake status=500]]"])
    assert model.embeddings.create(model="m", input=["fine"]).usage.total_tokens == 1


# --- tool calls and structured output -------------------------------------------------

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "threshold": {"type": "number"},
        "alerts": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "raw": {"type": "array"},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "label": {"type": "string"}},
            "required": ["lat"],
        },
        "note": {"type": "string"},
    },
    "required": ["city", "unit", "days", "threshold", "alerts", "tags", "raw", "where"],
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
ASK: list[Any] = [{"role": "user", "content": "weather and time? [[fake calls=2]]"}]
AUTH = {"authorization": "Bearer sk-test"}


class Where(BaseModel):
    lat: float
    label: str


class Forecast(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int
    warm: bool
    where: Where
    temps: list[float]
    note: str | None


def sse(http: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed chat request's chunks, as JSON, by hand (the last line must be [DONE])."""
    reply = http.post("/v1/chat/completions", headers=AUTH, json={**body, "stream": True})
    assert reply.status_code == 200, reply.text
    lines = [line.removeprefix("data: ") for line in reply.text.splitlines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def calls_of(message: ChatCompletionMessage) -> list[dict[str, str]]:
    """A message's function calls, as ``expected_calls`` gives them."""
    calls = message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in calls
        if isinstance(c, ChatCompletionMessageFunctionToolCall)
    ]


def test_arguments_fill_the_required_properties_by_type() -> None:
    assert fill(WEATHER_PARAMETERS) == {
        "city": "city value",
        "unit": "celsius",
        "days": 7,
        "threshold": 4.5,
        "alerts": True,
        "tags": ["tags value"],
        "raw": [],
        "where": {"lat": 4.5},
    }
    # $ref into $defs and nullable anyOf, as Pydantic writes a model's schema
    schema = Forecast.model_json_schema()
    value = fill(schema, "forecast")
    jsonschema.validate(value, schema)
    assert Forecast.model_validate(value).where == Where(lat=4.5, label="label value")


def test_expected_calls_follow_tool_choice_and_the_directive() -> None:
    plain: list[Any] = [{"role": "user", "content": "weather?"}]
    assert expected_calls(plain, TOOLS) == []  # "auto" and no directive: it answers
    assert expected_calls(ASK, TOOLS, "none") == []
    assert expected_calls(ASK, None) == []
    calls = expected_calls(ASK, TOOLS)
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert calls == expected_calls([dict(m) for m in ASK], TOOLS)  # deterministic
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c["id"]) for c in calls)
    assert len({c["id"] for c in calls}) == 2
    assert json.loads(calls[1]["arguments"]) == {"zone": "zone value"}
    three: list[Any] = [{"role": "user", "content": "x [[fake calls=3]]"}]
    assert [c["name"] for c in expected_calls(three, TOOLS)] == [
        "get_weather",
        "get_time",
        "get_weather",
    ]
    assert [c["name"] for c in expected_calls(ASK, TOOLS, parallel=False)] == ["get_weather"]
    assert [c["name"] for c in expected_calls(plain, TOOLS, "required")] == ["get_weather"]
    forced = {"type": "function", "function": {"name": "get_time"}}
    assert [c["name"] for c in expected_calls(plain, TOOLS, forced)] == ["get_time"]
    assert parse_directive("[[fake calls=2]]", Behaviour()).calls == 2


def test_a_forced_tool_choice_calls_that_function_with_its_schema_filled(model: OpenAI) -> None:
    # GIVEN two tools, the first with properties of every type
    messages: list[Any] = [{"role": "user", "content": "what is the weather in Paris?"}]
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    # WHEN the request forces the first
    reply = model.chat.completions.create(
        model="m", messages=messages, tools=TOOLS, tool_choice=forced
    )
    # THEN the model calls it, not streamed, with arguments that fill its schema
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = calls_of(choice.message)
    assert call["name"] == "get_weather"
    assert [call] == expected_calls(messages, TOOLS, forced)
    jsonschema.validate(json.loads(call["arguments"]), WEATHER_PARAMETERS)
    # AND usage counts the tools' JSON in the prompt, the arguments in the completion
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == prompt_tokens(messages, TOOLS)
    assert reply.usage.prompt_tokens > prompt_tokens(messages) + 50
    assert reply.usage.completion_tokens == text_tokens(call["arguments"])


def test_two_parallel_calls_stream_as_openai_streams_them(http: TestClient) -> None:
    # WHEN the prompt asks for two calls, streamed with usage
    chunks = sse(
        http,
        {"model": "m", "messages": ASK, "tools": TOOLS, "stream_options": {"include_usage": True}},
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    # THEN the first delta is the role with no content
    assert deltas[0] == {"role": "assistant", "content": None}
    # AND each call opens with its id, type and name, then streams its arguments in pieces
    calls = expected_calls(ASK, TOOLS)
    rest = deltas[1:-1]
    for index, call in enumerate(calls):
        assert rest[0] == {
            "tool_calls": [
                {
                    "index": index,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": ""},
                }
            ]
        }
        pieces = []
        for delta in rest[1:]:
            if "id" in delta["tool_calls"][0]:
                break
            assert delta == {
                "tool_calls": [{"index": index, "function": delta["tool_calls"][0]["function"]}]
            }
            pieces.append(delta["tool_calls"][0]["function"]["arguments"])
        assert "".join(pieces) == call["arguments"]
        assert len(pieces) > 1 and all(0 < len(p) <= 4 for p in pieces)
        rest = rest[1 + len(pieces) :]
    assert rest == []
    # AND it ends with finish_reason "tool_calls", then the usage chunk
    assert deltas[-1] == {} and chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == sum(text_tokens(c["arguments"]) for c in calls)


def test_the_sdk_stream_helper_accumulates_the_parallel_calls(model: OpenAI) -> None:
    with model.chat.completions.stream(model="m", messages=ASK, tools=TOOLS) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    want = expected_calls(ASK, TOOLS)
    assert [(e.index, e.name, e.arguments) for e in done] == [
        (i, c["name"], c["arguments"]) for i, c in enumerate(want)
    ]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    got = [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in choice.message.tool_calls or []
    ]
    assert got == want


def test_non_streamed_parallel_calls_and_parallel_tool_calls_off(model: OpenAI) -> None:
    reply = model.chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    assert calls_of(reply.choices[0].message) == expected_calls(ASK, TOOLS)
    one = model.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, parallel_tool_calls=False
    )
    assert [c["name"] for c in calls_of(one.choices[0].message)] == ["get_weather"]
    # AND "none" makes it answer in text
    text = model.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="none")
    assert text.choices[0].finish_reason == "stop"
    assert text.choices[0].message.content == expected_answer(ASK, behaviour=Behaviour(tokens=12))


def test_max_tokens_cuts_the_arguments(model: OpenAI) -> None:
    reply = model.chat.completions.create(model="m", messages=ASK, tools=TOOLS, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    (call,) = calls_of(reply.choices[0].message)
    assert call["arguments"] == expected_calls(ASK, TOOLS)[0]["arguments"][:12]


def test_the_answer_after_tool_results_mentions_each(model: OpenAI) -> None:
    # GIVEN the model's two calls and their results
    calls = model.chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    message = calls.choices[0].message
    results = ['{"temp": 21}', "12:00"]
    conversation: list[Any] = [
        *ASK,
        message.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": call.id, "content": result}
            for call, result in zip(message.tool_calls or [], results, strict=True)
        ),
    ]
    # WHEN they are sent back, streamed
    stream = model.chat.completions.create(
        model="m",
        messages=conversation,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # THEN the model answers in text that mentions each result, and deterministically
    assert text.startswith('Based on get_weather: {"temp": 21}; based on get_time: 12:00.')
    assert text == expected_answer(conversation, behaviour=Behaviour(tokens=12))
    assert chunks[-2].choices[0].finish_reason == "stop"
    # AND the prompt counts the calls and the results
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == prompt_tokens(conversation, TOOLS)
    assert usage.prompt_tokens > prompt_tokens(ASK, TOOLS) + 2 * MESSAGE_OVERHEAD_TOKENS


def test_a_json_schema_answer_parses_with_the_sdk_and_validates(
    http: TestClient, model: OpenAI
) -> None:
    # WHEN the SDK's parse helper asks for a Pydantic model (a strict json_schema)
    messages: list[Any] = [{"role": "user", "content": "a forecast please"}]
    reply = model.chat.completions.parse(model="m", messages=messages, response_format=Forecast)
    # THEN the answer is a document of that model, parsed
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.parsed is not None
    assert choice.message.parsed.unit == "celsius" and choice.message.parsed.temps == [4.5]
    sent = http.get("/fake/requests").json()["requests"][-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    # AND streamed, the same document arrives as text in pieces, valid against the schema
    with model.chat.completions.stream(
        model="m", messages=messages, response_format=Forecast
    ) as stream:
        pieces = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert len(pieces) > 5 and all(len(p) <= 4 for p in pieces)
    jsonschema.validate(json.loads("".join(pieces)), sent["json_schema"]["schema"])
    assert "".join(pieces) == expected_answer(messages, response_format=sent)


def test_a_json_object_answer_is_a_small_json_object(model: OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "answer in JSON: hi"}]
    reply = model.chat.completions.create(
        model="m", messages=messages, response_format={"type": "json_object"}
    )
    assert json.loads(reply.choices[0].message.content or "") == {
        "answer": 'You asked: "answer in JSON: hi".'
    }


STRICT_LOOSE: Any = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


# An assistant turn that called get_time as call_a.
CALLED_A = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    ],
}


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        (
            {"messages": [*HI, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
            "messages.[1].role",
            "must be a response to a preceeding message with 'tool_calls'",
        ),
        (
            {
                "messages": [
                    *HI,
                    CALLED_A,
                    {"role": "tool", "tool_call_id": "call_b", "content": "1"},
                ],
                "tools": TOOLS,
            },
            "messages.[2].tool_call_id",
            "'tool_call_id' of 'call_b' not found",
        ),
        (
            {
                "messages": [
                    *HI,
                    CALLED_A,
                    *HI,
                ],
            },
            "messages.[1].role",
            "did not have response messages: call_a",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "function 'nope' is not in 'tools'",
        ),
        (
            {"tools": [{"type": "function", "function": {"parameters": {}}}]},
            "tools[0].function.name",
            "Missing required parameter",
        ),
        ({"tool_choice": "required"}, "tool_choice", "only allowed when 'tools' are specified"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "Supported values are"),
        ({"response_format": {"type": "json_object"}}, "messages", "must contain the word 'json'"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": STRICT_LOOSE, "strict": True},
                }
            },
            "response_format",
            "'additionalProperties' is required to be supplied and to be false",
        ),
    ],
)
def test_malformed_tool_requests_are_refused_as_openai_refuses_them(
    http: TestClient, extra: dict[str, Any], param: str, says: str
) -> None:
    reply = http.post(
        "/v1/chat/completions", headers=AUTH, json={"model": "m", "messages": HI, **extra}
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert says in error["message"]
    assert http.get("/fake/stats").json()["chat_requests"] == 0  # it never reached the model


def test_the_sdk_raises_bad_request_for_a_forced_unknown_function(model: OpenAI) -> None:
    with pytest.raises(BadRequestError) as raised:
        model.chat.completions.create(
            model="m",
            messages=HI,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert raised.value.param == "tool_choice"


def test_the_fake_records_whole_requests_beside_the_conversations(
    http: TestClient, model: OpenAI
) -> None:
    forced: Any = {"type": "function", "function": {"name": "get_time"}}
    model.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, tool_choice=forced, parallel_tool_calls=False
    )
    schema: Any = {
        "type": "json_schema",
        "json_schema": {"name": "f", "schema": WEATHER_PARAMETERS},
    }
    model.chat.completions.create(model="m", messages=HI, response_format=schema)
    assert http.get("/fake/conversations").json()["conversations"] == [ASK, HI]
    first, second = http.get("/fake/requests").json()["requests"]
    assert first["tools"] == TOOLS and first["tool_choice"] == forced
    assert first["parallel_tool_calls"] is False and first["messages"] == ASK
    assert second["response_format"]["json_schema"]["schema"] == WEATHER_PARAMETERS


def test_argument_pieces_are_paced_like_tokens() -> None:
    # GIVEN a model at 200 tokens a second
    app = create_app(Behaviour(tokens=12, ttft_ms=0, tps=200))
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    pieces = len(expected_calls(HI, TOOLS, forced)[0]["arguments"]) // 4
    with TestClient(app) as http:
        start = time.monotonic()
        sse(http, {"model": "m", "messages": HI, "tools": TOOLS, "tool_choice": forced})
        # THEN the arguments take as long as that many tokens would
        assert time.monotonic() - start >= (pieces - 1) / 200
