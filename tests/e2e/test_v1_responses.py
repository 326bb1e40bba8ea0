"""OpenAI's Responses API on /v1, through the unmodified `openai` Python SDK, on the whole
local stack: background answers read in part and resumed by sequence number, a worker
killed mid-answer, the SDK's stream helper, cancel, delete, conversations continued by
previous_response_id, and every answer ending."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest

from llmstream.settings import Settings
from localcloud.up import Stack
from tests.chaos import running_tasks
from tests.e2e.conftest import FAKE_TOKENS
from tests.e2e.v1 import (
    RESPONSE_ID,
    TERMINAL,
    Follower,
    answer_to,
    assert_numbered_from,
    assert_whole,
    client,
    model,
    read,
    said,
    sent_to_model,
    signature,
    sse_fields,
    text,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.e2e
SLOW = "[[fake tokens=120 tps=40]]"  # 3 s: a client can drop and come back mid-answer
LONG = "[[fake tokens=2400 tps=20]]"  # 2 minutes: still running whatever the test does


def marked(text: str) -> str:
    """``text`` with a mark of its own, to find what the model was sent for it."""
    return f"{text} {uuid.uuid4().hex[:12]}"


def error_of(call: Callable[[], Any]) -> str:
    """The SDK's exception class for what ``call`` was answered, by name."""
    try:
        call()
    except openai.APIStatusError as e:
        return type(e).__name__
    return "no error"


def test_a_background_stream_read_in_part_resumes_after_n(chat_stack: Stack) -> None:
    c = client(chat_stack, "v1-resume")
    # GIVEN a background answer, streamed, of which the client read some events
    prompt = marked(f"resume me {SLOW}")
    stream = c.responses.create(model=model(chat_stack), input=prompt, background=True, stream=True)
    first = read(stream, deltas=5)
    created = first[0]
    assert created.type == "response.created" and created.sequence_number == 0
    rid = created.response.id
    assert RESPONSE_ID.fullmatch(rid), rid
    n = first[-1].sequence_number
    # WHEN it comes back with the last sequence number it saw, and reads to the end
    rest = read(c.responses.retrieve(rid, stream=True, starting_after=n))
    # THEN it gets exactly the events after n: contiguous from 0, nothing lost or repeated
    assert_numbered_from(rest, n + 1)
    events = first + rest
    assert_whole(events)
    # AND its text is the stored response's, which is the whole answer
    stored = c.responses.retrieve(rid)
    assert stored.status == "completed"
    assert text(events) == stored.output_text
    assert len(stored.output) == 1 and stored.usage is not None
    assert stored.usage.output_tokens == 120
    [sent] = sent_to_model(chat_stack, prompt)
    assert stored.output_text == answer_to(sent)
    # AND a replay from the start is the same events with the same numbers
    assert signature(read(c.responses.retrieve(rid, stream=True))) == signature(events)


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_answer_leaves_the_client_whole(local_stack: Stack) -> None:
    c = client(local_stack, "v1-crash")
    prompt = marked("crash me [[fake tokens=300 tps=20]]")  # 15 s
    # GIVEN a background answer whose client read 1.5 s of it, then dropped the connection
    first = read(
        c.responses.create(model=model(local_stack), input=prompt, background=True, stream=True),
        deltas=30,
    )
    rid = first[0].response.id
    # AND a second viewer that follows it from the start, across what comes next
    live = Follower(lambda: c.responses.retrieve(rid, stream=True))
    wait_until(live.deltas, "the second viewer to see the answer")
    # WHEN every worker environment that has run an answer for a second is killed (SIGKILL):
    # the one running this answer among them
    victims = wait_until(lambda: running_tasks(local_stack, busy_for=1.0), "a running worker")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # AND the client comes back after the last event it saw, and reads to the end
    n = first[-1].sequence_number
    rest = read(c.responses.retrieve(rid, stream=True, starting_after=n))
    # THEN the answer completed, and the client holds it whole, numbered without a gap
    events = first + rest
    assert_whole(events)
    stored = c.responses.retrieve(rid)
    assert stored.status == "completed"
    assert text(events) == stored.output_text
    # AND the viewer that stayed across the crash saw the same events
    assert signature(live.result()) == signature(events)
    # AND the answer was retried: the model was asked twice
    assert len(sent_to_model(local_stack, prompt)) >= 2


def test_the_stream_helper_replays_a_running_and_a_finished_response(local_stack: Stack) -> None:
    c = client(local_stack, "v1-helper")
    # GIVEN an answer of 10 s, running, and one that has finished
    running = c.responses.create(
        model=model(local_stack), input="running [[fake tokens=200 tps=20]]", background=True
    )
    assert wait_for(c, running.id, ("in_progress", *TERMINAL)).status == "in_progress"
    finished = c.responses.create(model=model(local_stack), input="finished")
    assert finished.status == "completed"
    for response in (running, finished):
        # WHEN the SDK's helper streams it by id, from the start
        with c.responses.stream(response_id=response.id) as stream:
            events = list(stream)
            final = stream.get_final_response()
        # THEN it gets the whole answer, and the final response is the stored one
        assert_whole(events)
        stored = c.responses.retrieve(response.id)
        assert final.id == stored.id == response.id
        assert final.status == stored.status == "completed"
        assert final.output_text == stored.output_text == text(events)


def test_cancel_ends_a_running_response_cancelled(local_stack: Stack) -> None:
    c = client(local_stack, "v1-cancel")
    created = c.responses.create(
        model=model(local_stack), input=f"cancel me {LONG}", background=True
    )
    # GIVEN a viewer of the running answer
    viewer = Follower(lambda: c.responses.retrieve(created.id, stream=True))
    wait_until(lambda: viewer.deltas() >= 3, "the answer to start")
    # WHEN it is cancelled
    cancelled = c.responses.cancel(created.id)
    assert cancelled.id == created.id
    assert cancelled.status in ("in_progress", "cancelled"), cancelled.status
    # THEN it ends cancelled once the worker stops
    final = wait_for(c, created.id)
    assert final.status == "cancelled"
    # AND the viewer's stream ends as OpenAI's clients expect, holding the stored text
    events = viewer.result()
    assert_numbered_from(events, 0)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"
    assert text(events) == final.output_text
    # AND cancelling again is harmless
    assert c.responses.cancel(created.id).status == "cancelled"


def test_previous_response_id_continues_the_conversation_for_its_owner_only(
    local_stack: Stack,
) -> None:
    ann, bob = client(local_stack, "v1-ann"), client(local_stack, "v1-bob")
    first_input, second_input = marked("My name is Ann."), marked("What is my name?")
    # GIVEN Ann's answer, and her next question continuing from it
    first = ann.responses.create(model=model(local_stack), input=first_input)
    second = ann.responses.create(
        model=model(local_stack), input=second_input, previous_response_id=first.id
    )
    assert first.status == second.status == "completed"
    # THEN the model received the earlier turn with the question, and answered all of it
    [sent] = sent_to_model(local_stack, second_input)
    assert said(sent) == [
        ("user", first_input),
        ("assistant", first.output_text),
        ("user", second_input),
    ]
    assert second.output_text == answer_to(sent)
    # AND Bob's credential finds nothing of Ann's: not to read, cancel, delete, or continue
    bob_input = marked("Bob asks")
    calls = {
        "retrieve": lambda: bob.responses.retrieve(first.id),
        "stream": lambda: bob.responses.retrieve(first.id, stream=True),
        "cancel": lambda: bob.responses.cancel(first.id),
        "delete": lambda: bob.responses.delete(first.id),
        "continue": lambda: bob.responses.create(
            model=model(local_stack), input=bob_input, previous_response_id=first.id
        ),
    }
    assert {name: error_of(call) for name, call in calls.items()} == dict.fromkeys(
        calls, "NotFoundError"
    )
    assert sent_to_model(local_stack, bob_input) == []
    assert ann.responses.retrieve(first.id).output_text == first.output_text


def test_a_plain_create_returns_the_completed_response(local_stack: Stack) -> None:
    c = client(local_stack, "v1-plain")
    question = marked("plain question")
    # WHEN a response is created with neither stream nor background, as input messages
    response = c.responses.create(
        model=model(local_stack),
        input=[{"role": "user", "content": question}],
        instructions="Answer briefly.",
        metadata={"case": "plain"},
    )
    # THEN it is the completed Response, with the model's answer and its usage
    assert RESPONSE_ID.fullmatch(response.id) and response.object == "response"
    assert response.status == "completed" and response.metadata == {"case": "plain"}
    [sent] = sent_to_model(local_stack, question)
    assert response.output_text == answer_to(sent)
    assert response.usage is not None and response.usage.output_tokens == FAKE_TOKENS
    assert response.usage.input_tokens > 0
    # AND the instructions went to the model ahead of the input
    assert said(sent) == [("user", question)]
    assert any(
        m["role"] in ("system", "developer") and "Answer briefly." in json.dumps(m["content"])
        for m in sent
    ), sent
    # AND it is stored as returned
    stored = c.responses.retrieve(response.id)
    assert (stored.status, stored.output_text) == ("completed", response.output_text)


def test_max_output_tokens_ends_the_answer_incomplete(local_stack: Stack) -> None:
    c = client(local_stack, "v1-short")
    events = read(
        c.responses.create(
            model=model(local_stack), input="cut me short", max_output_tokens=16, stream=True
        )
    )
    assert_whole(events, end="response.incomplete")
    end = events[-1].response
    assert end.status == "incomplete" and end.incomplete_details.reason == "max_output_tokens"
    stored = c.responses.retrieve(end.id)
    assert stored.status == "incomplete" and text(events) == stored.output_text
    assert stored.usage is not None and stored.usage.output_tokens == 16


def test_every_accepted_background_request_ends(local_stack: Stack) -> None:
    # GIVEN background requests of several users: four to answer, one the model refuses,
    # and one cancelled at once (while it waits, or as it starts)
    answered = [f"v1-load-{i}" for i in range(4)]
    asks = {name: marked(f"{name} [[fake tokens=30 tps=60]]") for name in answered}
    asks["v1-load-fail"] = "fail [[fake status=400]]"
    asks["v1-load-cancel"] = f"cancel at once {LONG}"
    clients = {name: client(local_stack, name) for name in asks}
    created = {
        name: clients[name].responses.create(model=model(local_stack), input=ask, background=True)
        for name, ask in asks.items()
    }
    # THEN each is accepted as queued
    assert {name: r.status for name, r in created.items()} == dict.fromkeys(asks, "queued")
    clients["v1-load-cancel"].responses.cancel(created["v1-load-cancel"].id)
    # AND each ends: answered, failed with the model's error, or cancelled
    ended = {name: wait_for(clients[name], r.id) for name, r in created.items()}
    assert {name: r.status for name, r in ended.items()} == {
        **dict.fromkeys(answered, "completed"),
        "v1-load-fail": "failed",
        "v1-load-cancel": "cancelled",
    }
    failure = ended["v1-load-fail"].error
    assert failure is not None and "400" in failure.message, failure
    for name in answered:
        [sent] = sent_to_model(local_stack, asks[name])
        assert ended[name].output_text == answer_to(sent)


def test_the_event_stream_is_sse_with_comment_keep_alives(local_stack: Stack) -> None:
    """Raw SSE: `event: <type>` with JSON data carrying type and sequence_number, and
    keep-alives as comments, never as data (an answer that waits longer than a ping)."""
    ping = int(
        local_stack.env["StreamFunction"].get("STREAM_PING_SECONDS")
        or Settings.model_fields["stream_ping_seconds"].default
    )
    body = {
        "model": model(local_stack),
        "input": f"wait for it [[fake tokens=5 ttft_ms={(ping + 5) * 1000}]]",
        "background": True,
        "stream": True,
    }
    fields = sse_fields(local_stack, "/responses", body, "v1-raw", read_timeout=ping + 30)
    events, name = [], None
    for field, value in fields:
        if field == "event":
            name = value
        elif field == "data":
            data: dict[str, Any] = json.loads(value)
            assert data["type"] == name and isinstance(data["sequence_number"], int), value
            events.append(data)
        else:
            assert field in ("", "id", "retry"), (field, value)
    assert any(field == "" for field, _ in fields), "no keep-alive comment"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"


def test_a_deleted_response_is_gone(local_stack: Stack) -> None:
    c = client(local_stack, "v1-delete")
    response = c.responses.create(model=model(local_stack), input="delete me")
    deleted = c.responses.with_raw_response.delete(response.id)
    assert deleted.http_response.json() == {
        "id": response.id,
        "object": "response",
        "deleted": True,
    }
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(response.id, stream=True)
