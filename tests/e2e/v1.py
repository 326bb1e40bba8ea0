"""The OpenAI-compatible /v1 of the stream function, as the unmodified `openai` SDK sees it:
clients of a stack's users, event streams read (whole, or in part, or in a thread), the
checks every answer's events must pass, and what the fake model was sent. Shared by the
test_v1_*.py tests; waits poll with a deadline that is only a guard against a hang."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import openai
from openai.types.responses import Response

from localcloud.fake_openai import Behaviour, expected_answer
from localcloud.up import Stack
from tests.e2e.conftest import DEFAULT_USER, FAKE_TOKENS, user

DEADLINE = 120.0  # seconds: how long a wait may take on a loaded machine before it is a hang
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")
TERMINAL = ("completed", "failed", "cancelled", "incomplete")
# The events of one answer, in order: created (and queued, which OpenAI's background mode
# sends), in progress, then one message item or more (a second after a worker retry that
# diverged), and the end.
_ITEM = (
    "response.output_item.added response.content_part.added( response.output_text.delta)*"
    " response.output_text.done response.content_part.done response.output_item.done"
)
_SHAPE = r"response\.created( response\.queued)? response\.in_progress( {item})+ {end}"


def base_url(stack: Stack) -> str:
    return f"{stack.urls['stream']}/v1"


def model(stack: Stack) -> str:
    """The model the stack's deployment answers with (its ModelId)."""
    return stack.env["StreamFunction"]["MODEL_ID"]


def client(
    stack: Stack, name: str = DEFAULT_USER, *, api_key: str | None = None, **options: Any
) -> openai.OpenAI:
    """The SDK at the stack's /v1 as user ``name`` (their access token), or with an API
    key. No retries unless asked for: a test sees each answer of the server as it is."""
    return openai.OpenAI(
        base_url=base_url(stack),
        api_key=api_key or user(stack, name).access_token,
        **{"max_retries": 0, "timeout": 60.0, **options},
    )


def sse_fields(
    stack: Stack, path: str, body: dict[str, Any], name: str, read_timeout: float = 60
) -> list[tuple[str, str]]:
    """A POST to /v1``path`` as user ``name``, read as raw Server-Sent Events: each line's
    field and value, in order (the field of a comment is "")."""
    with (
        httpx.Client(timeout=httpx.Timeout(30, read=read_timeout)) as http,
        http.stream(
            "POST", f"{base_url(stack)}{path}", json=body, headers=user(stack, name).headers
        ) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        fields = []
        for line in resp.iter_lines():
            if line:
                field, _, value = line.partition(":")
                fields.append((field, value.removeprefix(" ")))
    return fields


def read(stream: Iterable[Any], deltas: int | None = None) -> list[Any]:
    """An SDK event stream's events to its end, or up to its ``deltas``-th text delta, after
    which the stream is closed (a client that drops the connection mid-answer)."""
    events: list[Any] = []
    seen = 0
    for event in stream:
        events.append(event)
        seen += event.type == "response.output_text.delta"
        if deltas is not None and seen >= deltas:
            stream.close()  # type: ignore[attr-defined]
            break
    return events


def text(events: list[Any]) -> str:
    """What the client holds: every text delta, concatenated."""
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def signature(events: list[Any]) -> list[tuple[int, str, str | None]]:
    """Each event's number, type and delta: what two readings of one answer must share."""
    return [(e.sequence_number, e.type, getattr(e, "delta", None)) for e in events]


def assert_numbered_from(events: list[Any], first: int) -> None:
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(first, first + len(numbers))), numbers


def assert_whole(events: list[Any], end: str = "response.completed") -> None:
    """Numbered 0, 1, 2, ... with no gap or repeat, in the order of OpenAI's events."""
    assert_numbered_from(events, 0)
    shape = " ".join(e.type for e in events)
    pattern = _SHAPE.format(item=_ITEM, end=re.escape(end))
    assert re.fullmatch(pattern, shape), shape


def wait_until(ready: Callable[[], Any], what: str) -> Any:
    """Poll ``ready`` until it returns something true, and return that."""
    deadline = time.monotonic() + DEADLINE
    while not (got := ready()):
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE:.0f} s"
        time.sleep(0.2)
    return got


def wait_for(c: openai.OpenAI, response_id: str, statuses: tuple[str, ...] = TERMINAL) -> Response:
    """The response once its status is one of ``statuses`` (by default, once it ended)."""

    def now() -> Response | None:
        got = c.responses.retrieve(response_id)
        return got if got.status in statuses else None

    found: Response = wait_until(now, f"{response_id} to be {' or '.join(statuses)}")
    return found


class Follower(threading.Thread):
    """A second viewer: the stream ``open`` returns, read to its end in a thread."""

    def __init__(self, open_stream: Callable[[], Iterable[Any]]) -> None:
        super().__init__(daemon=True)
        self.open_stream = open_stream
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for event in self.open_stream():
                self.events.append(event)
        except BaseException as e:  # handed to the test by result()
            self.error = e

    def deltas(self) -> int:
        return sum(e.type == "response.output_text.delta" for e in list(self.events))

    def result(self) -> list[Any]:
        """Its events, once its stream has ended."""
        self.join(DEADLINE)
        assert not self.is_alive(), f"the stream did not end: {signature(self.events)[-3:]}"
        if self.error is not None:
            raise self.error
        return self.events


def sent_to_model(stack: Stack, marker: str) -> list[list[dict[str, Any]]]:
    """The conversations the fake model received whose last message holds ``marker``."""
    fake = stack.urls["openai"].removesuffix("/v1")
    sent = httpx.get(f"{fake}/fake/conversations", timeout=10).json()["conversations"]
    return [c for c in sent if marker in json.dumps(c[-1])]


def answer_to(conversation: list[dict[str, Any]]) -> str:
    """What the stack's fake model answers to ``conversation``."""
    return expected_answer(conversation, behaviour=Behaviour(tokens=FAKE_TOKENS))


def said(conversation: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The user's and the assistant's turns of a conversation sent to the model, as text."""
    out = []
    for m in conversation:
        if m["role"] in ("user", "assistant"):
            content = m["content"]
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content)
            out.append((m["role"], content))
    return out
