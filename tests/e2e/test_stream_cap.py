"""Each user's open streams are capped (UserMaxStreams), on the whole local stack: the
stream past the cap is a 429 with Retry-After, a closed stream frees its slot, and the slots
of a stream server that died come back by themselves within the lease time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localcloud.up import Stack
from tests.e2e.conftest import auth, stack_options

pytestmark = pytest.mark.e2e
CAP = 3
LEASE_SECONDS = 5
# Answers that outlast the test (2 minutes at 20 tokens a second): streams stay open.
LONG = "[[fake tokens=2400 tps=20]]"
OPEN_DEADLINE = 60.0  # how long a stream may take to open on a loaded machine


@pytest.fixture(scope="module")
def cap_stack() -> Iterator[Stack]:
    """A stack whose users may have 3 streams open at once, with 5-second leases."""
    opts = stack_options(
        "e2e-cap",
        parameters={"UserMaxStreams": str(CAP)},
        extra_env={"STREAM_LEASE_SECONDS": str(LEASE_SECONDS)},
    )
    stack = Stack(opts)
    stack.start()
    yield stack
    stack.stop()


class Viewer(threading.Thread):
    """One open stream, read in a thread until it ends, breaks, or is told to close."""

    def __init__(self, method: str, url: str, **request: Any) -> None:
        super().__init__(daemon=True)
        self.method, self.url, self.request = method, url, request
        self.opened = threading.Event()
        self.closing = threading.Event()
        self.status: int | None = None
        self.headers: httpx.Headers = httpx.Headers()
        self.body = ""
        self.ended: str | None = None  # why it stopped reading, once it has
        self.start()

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(30, read=60)) as client,
                client.stream(self.method, self.url, **self.request) as resp,
            ):
                self.status, self.headers = resp.status_code, resp.headers
                if resp.status_code != 200:
                    self.body = resp.read().decode()
                    return
                self.opened.set()
                for _ in resp.iter_raw():
                    if self.closing.is_set():
                        self.ended = "closed"
                        return
                self.ended = "answer ended"
        except httpx.HTTPError as e:
            self.ended = f"{type(e).__name__}: {e}"
        finally:
            self.opened.set()

    def wait_open(self) -> int:
        assert self.opened.wait(OPEN_DEADLINE), f"{self.url} did not answer"
        assert self.status is not None, self.ended
        return self.status

    @property
    def streaming(self) -> bool:
        return self.status == 200 and self.ended is None

    def close(self) -> None:
        self.closing.set()
        self.join(30)


def chat(stack: Stack, user: str, message: str) -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.urls['api']}/chat",
        json={"message": message},
        headers=auth(stack, user),
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def cancel(stack: Stack, user: str, task_id: str) -> None:
    """Stop a long answer the test no longer follows (the worker is free for the next)."""
    httpx.post(f"{stack.urls['api']}/chat/{task_id}/cancel", headers=auth(stack, user), timeout=30)


def assert_refused(viewer: Viewer) -> None:
    """A 429 that says why, and when to come back: within one lease."""
    assert viewer.wait_open() == 429, (viewer.status, viewer.body)
    assert 1 <= int(viewer.headers["retry-after"]) <= LEASE_SECONDS
    assert "too many open streams" in viewer.body


def open_when_free(url: str, until: float) -> Viewer:
    """A stream of ``url``, tried again (each refusal closed at once) until one opens."""
    while True:
        viewer = Viewer("GET", url)
        if viewer.wait_open() == 200:
            return viewer
        assert viewer.status == 429, (viewer.status, viewer.body)
        assert time.monotonic() < until, "no slot came free in time"
        time.sleep(0.5)


def test_a_users_streams_are_capped_and_their_slots_come_back(cap_stack: Stack) -> None:
    stream = cap_stack.urls["stream"]
    first = chat(cap_stack, "cap-ann", f"first {LONG}")
    second = chat(cap_stack, "cap-ann", f"second {LONG}")
    viewers: list[Viewer] = []
    try:
        # GIVEN Ann has three streams open: two viewers of one answer, one direct answer
        viewers += [Viewer("GET", first["stream_url"]) for _ in range(2)]
        viewers.append(
            Viewer(
                "POST",
                f"{stream}/direct",
                json={"message": f"direct {LONG}"},
                headers=auth(cap_stack, "cap-ann"),
            )
        )
        assert [v.wait_open() for v in viewers] == [200] * CAP, [v.body for v in viewers]
        # WHEN she opens one more, by token or by Bearer, or asks for another direct answer
        # THEN each is refused with 429 and Retry-After
        assert_refused(Viewer("GET", second["stream_url"]))
        by_bearer = f"{stream}/stream/{second['task_id']}"
        assert_refused(Viewer("GET", by_bearer, headers=auth(cap_stack, "cap-ann")))
        assert_refused(
            Viewer(
                "POST",
                f"{stream}/direct",
                json={"message": "one more"},
                headers=auth(cap_stack, "cap-ann"),
            )
        )
        # AND another user is not held back by that
        bobs = chat(cap_stack, "cap-bob", f"bob's {LONG}")
        bob = Viewer("GET", bobs["stream_url"])
        assert bob.wait_open() == 200, bob.body
        bob.close()
        cancel(cap_stack, "cap-bob", bobs["task_id"])
        # AND streams kept open past two lease times still hold their slots (renewed)
        time.sleep(2 * LEASE_SECONDS + 1)
        assert all(v.streaming for v in viewers), [v.ended for v in viewers]
        assert_refused(Viewer("GET", second["stream_url"]))

        # WHEN one of her streams closes THEN a new one opens
        viewers.pop(0).close()
        viewers.append(open_when_free(second["stream_url"], time.monotonic() + OPEN_DEADLINE))

        # WHEN the stream server dies with her three streams open (nothing releases them)
        killed = time.monotonic()
        cap_stack.kill("stream")
        cap_stack.revive("stream")
        for v in viewers:
            v.join(30)
        assert not any(v.streaming for v in viewers)
        # THEN their leases run out by themselves: three streams open again
        until = killed + LEASE_SECONDS + OPEN_DEADLINE
        viewers = [open_when_free(second["stream_url"], until) for _ in range(CAP)]
        # AND the cap still holds
        assert_refused(Viewer("GET", first["stream_url"]))
    finally:
        for v in viewers:
            v.close()
        for task in (first, second):
            cancel(cap_stack, "cap-ann", task["task_id"])
