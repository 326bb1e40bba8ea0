from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import InternalServerError, OpenAI

from localcloud.fake_openai import (
    MESSAGE_OVERHEAD_TOKENS,
    Behaviour,
    answer_tokens,
    create_app,
    expected_answer,
    parse_directive,
    text_tokens,
)

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


def test_the_fake_records_whole_requests_beside_the_conversations(
    http: TestClient, model: OpenAI
) -> None:
    model.chat.completions.create(model="m", messages=HI, temperature=0.5, max_tokens=3)
    assert http.get("/fake/conversations").json()["conversations"] == [HI]
    (body,) = http.get("/fake/requests").json()["requests"]
    assert body == {"model": "m", "messages": HI, "temperature": 0.5, "max_tokens": 3}
