"""Chat Completions, models, API keys and errors on /v1, through the unmodified `openai`
Python SDK, on the whole local stack: an API key works as a user's credential until it is
revoked, and our refusals reach the SDK as its own exception classes with our message."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from localcloud.up import Stack
from tests.e2e.conftest import ANSWER_TOKENS, FAKE_TOKENS, auth
from tests.e2e.v1 import answer_to, client, model, said, sent_to_model, sse_fields

pytestmark = pytest.mark.e2e


def create_key(stack: Stack, name: str) -> dict[str, Any]:
    """A new API key of user ``name`` (POST /keys, signed in): shown once, in ``key``."""
    resp = httpx.post(
        f"{stack.urls['api']}/keys",
        json={"name": f"{name}'s laptop"},
        headers=auth(stack, name),
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    assert created["key"].startswith("lls_"), created
    return created


def test_chat_completions_through_an_api_key_until_it_is_revoked(local_stack: Stack) -> None:
    key = create_key(local_stack, "v1-keys")
    c = client(local_stack, api_key=key["key"])
    question = f"by key {uuid.uuid4().hex[:12]}"
    messages: Any = [{"role": "user", "content": question}]
    # WHEN the SDK asks for a completion with the key, whole and then streamed with usage
    whole = c.chat.completions.create(model=model(local_stack), messages=messages)
    chunks = list(
        c.chat.completions.create(
            model=model(local_stack),
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # THEN the whole one is a chat.completion with the model's answer and its usage
    assert whole.object == "chat.completion"
    [choice] = whole.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    sent = sent_to_model(local_stack, question)
    assert len(sent) == 2 and said(sent[0]) == [("user", question)]
    assert choice.message.content == answer_to(sent[0])
    assert whole.usage is not None and whole.usage.completion_tokens == FAKE_TOKENS
    # AND the streamed one is chunks of the same text, then a chunk with the usage alone
    *answer, last = chunks
    assert {ch.object for ch in chunks} == {"chat.completion.chunk"}
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == FAKE_TOKENS and last.usage.prompt_tokens > 0
    assert all(ch.usage is None for ch in answer)
    assert "".join(ch.choices[0].delta.content or "" for ch in answer) == choice.message.content
    assert answer[-1].choices[0].finish_reason == "stop"
    # WHEN the key is revoked
    revoked = httpx.delete(
        f"{local_stack.urls['api']}/keys/{key['id']}", headers=auth(local_stack, "v1-keys")
    )
    assert revoked.status_code in (200, 204), revoked.text
    # THEN it is refused at once, as the SDK's AuthenticationError
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=model(local_stack), messages=messages)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    assert len(sent_to_model(local_stack, question)) == 2


def test_a_streamed_completion_is_json_chunks_then_done(local_stack: Stack) -> None:
    """Raw SSE, as clients without the SDK read it: `data:` chunks, the usage, [DONE]."""
    body = {
        "model": model(local_stack),
        "messages": [{"role": "user", "content": "raw chunks"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    fields = sse_fields(local_stack, "/chat/completions", body, "v1-raw")
    data = [value for field, value in fields if field == "data"]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(value) for value in data[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == FAKE_TOKENS
    assert {field for field, _ in fields} <= {"data", "", "id", "retry", "event"}


def test_chat_completions_send_the_whole_conversation(local_stack: Stack) -> None:
    c = client(local_stack, "v1-chat")
    question = f"and now? {uuid.uuid4().hex[:12]}"
    turns = [("user", "first"), ("assistant", "an earlier answer"), ("user", question)]
    messages: Any = [
        {"role": "system", "content": "Be terse."},
        *({"role": role, "content": content} for role, content in turns),
    ]
    completion = c.chat.completions.create(model=model(local_stack), messages=messages)
    [sent] = sent_to_model(local_stack, question)
    assert said(sent) == turns
    assert any(m["role"] == "system" and m["content"] == "Be terse." for m in sent), sent
    assert completion.choices[0].message.content == answer_to(sent)


def test_models_lists_what_the_deployment_offers(local_stack: Stack) -> None:
    listed = list(client(local_stack, "v1-models").models.list())
    # The stack's AllowedModels is empty: its ModelId alone
    assert [m.id for m in listed] == [model(local_stack)]
    assert {m.object for m in listed} == {"model"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "web_search"}]),  # built-in tools: function tools only
        ("reasoning", {"effort": "low"}),
    ],
)
def test_an_unsupported_field_is_a_bad_request_naming_it(
    local_stack: Stack, field: str, value: Any
) -> None:
    c = client(local_stack, "v1-errors")
    with pytest.raises(openai.BadRequestError) as refused:
        c.responses.create(model=model(local_stack), input="hi", **{field: value})
    assert field in refused.value.message


def test_an_unknown_model_is_not_found(local_stack: Stack) -> None:
    c = client(local_stack, "v1-errors")
    with pytest.raises(openai.NotFoundError) as responses:
        c.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.NotFoundError) as completions:
        c.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    for refused in (responses, completions):
        assert "'no-such-model' is not offered here" in refused.value.message


def test_an_exhausted_daily_quota_is_a_rate_limit_the_sdk_does_not_retry(
    token_quota_stack: Stack,
) -> None:
    # GIVEN a user whose day fits about three answers of ANSWER_TOKENS, and the SDK's
    # default retries (which would retry a 429 the server did not tell it not to)
    sent: list[str] = []
    http = openai.DefaultHttpxClient(
        event_hooks={"request": [lambda request: sent.append(request.url.path)]}
    )
    name = f"v1-quota-{uuid.uuid4().hex[:8]}"  # a day of its own, however often this runs
    c = client(token_quota_stack, name, http_client=http, max_retries=2)

    def ask(i: int) -> Any:
        return c.responses.create(
            model=model(token_quota_stack),
            input=f"spend {i} [[fake tokens={ANSWER_TOKENS} tps=200]]",
            max_output_tokens=ANSWER_TOKENS,
        )

    # WHEN it asks until its day is spent
    answered = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for i in range(10):
            assert ask(i).status == "completed"
            answered += 1
    # THEN the answers that fitted ended, and the next is refused for the day, with our
    # message and when to come back, once: the SDK was told not to retry it
    assert answered >= 1
    assert "daily token quota" in refused.value.message
    headers = refused.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert 1 <= int(headers["retry-after"]) <= 86400
    assert sent == ["/v1/responses"] * (answered + 1)
