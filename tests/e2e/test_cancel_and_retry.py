"""Cancel, retries with backoff and the disconnect policy, on the whole local stack."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from httpx_sse import connect_sse

from localcloud.up import Stack
from tests.e2e.conftest import DEFAULT_USER, auth
from tests.e2e.test_chat_flow import get_status, post_chat, read_stream

pytestmark = pytest.mark.e2e


def status(stack: Stack, task_id: str, user: str = DEFAULT_USER) -> dict[str, object]:
    return get_status(stack, task_id, user)


def cancel(stack: Stack, task_id: str, user: str = DEFAULT_USER) -> httpx.Response:
    return httpx.post(
        f"{stack.urls['api']}/chat/{task_id}/cancel", headers=auth(stack, user), timeout=10
    )


def wait_for(predicate: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_cancel_ends_the_stream_with_cancelled(chat_stack: Stack) -> None:
    body = post_chat(chat_stack, {"message": "long [[fake tokens=400 tps=20]]"}).json()
    events: list[dict[str, object]] = []

    def viewer() -> None:
        with (
            httpx.Client(timeout=30) as client,
            connect_sse(client, "GET", body["stream_url"]) as source,
        ):
            events.extend(json.loads(e.data) for e in source.iter_sse())

    thread = threading.Thread(target=viewer)
    thread.start()
    wait_for(lambda: len(events) >= 2)
    # WHEN another user tries to stop it, nothing happens (to them, the task does not exist)
    assert cancel(chat_stack, body["task_id"], "e2e-other").status_code == 404
    # WHEN the user presses stop (twice)
    first = cancel(chat_stack, body["task_id"])
    second = cancel(chat_stack, body["task_id"])
    assert first.status_code == second.status_code == 200
    assert first.json()["cancel_requested"] is True
    thread.join(timeout=10)
    # THEN the stream ended with cancelled, well before the 20 s answer would have
    assert not thread.is_alive()
    assert events[-1] == {"type": "cancelled"}
    assert status(chat_stack, body["task_id"])["status"] == "cancelled"
    again = cancel(chat_stack, body["task_id"]).json()
    assert again["status"] == "cancelled"


def test_cancel_of_a_finished_or_unknown_task(local_stack: Stack) -> None:
    body = post_chat(local_stack, {"message": "short [[fake tokens=5]]"}).json()
    read_stream(body["stream_url"])
    done = cancel(local_stack, body["task_id"])
    assert done.status_code == 200 and done.json()["status"] == "done"
    assert cancel(local_stack, "0" * 32).status_code == 404
    unsigned = httpx.post(f"{local_stack.urls['api']}/chat/{body['task_id']}/cancel")
    assert unsigned.status_code == 401


def test_transient_failures_are_retried_with_backoff_then_end_in_error(local_stack: Stack) -> None:
    # GIVEN a model that answers 503 every time
    body = post_chat(local_stack, {"message": "overloaded [[fake status=503]]"}).json()
    seen: set[object] = set()

    def watch() -> bool:
        s = status(local_stack, body["task_id"])
        seen.add(s["status"])
        return s["status"] in ("done", "error", "cancelled")

    # WHEN the pipeline retries through the queue (2 s, then 4 s backoff)
    wait_for(watch, timeout=60)
    final = status(local_stack, body["task_id"])
    # THEN the task waited between attempts and ended with an error after the last one
    assert "waiting" in seen
    assert final["status"] == "error" and final["attempt"] == 3
    events = read_stream(body["stream_url"])
    assert [json.loads(e.data)["type"] for e in events] == ["error"]


def test_cancel_on_disconnect(local_stack: Stack) -> None:
    stream_opts = {"message": "leave me [[fake tokens=400 tps=20]]"}
    keep = post_chat(local_stack, stream_opts).json()
    drop = post_chat(local_stack, {**stream_opts, "cancel_on_disconnect": True}).json()
    for body in (keep, drop):
        with (
            httpx.Client(timeout=30) as client,
            connect_sse(client, "GET", body["stream_url"]) as source,
        ):
            for _ in zip(range(2), source.iter_sse(), strict=False):
                pass  # two events, then the viewer leaves
    # THEN the default answer goes on (to be resumed); the other one is stopped
    wait_for(lambda: status(local_stack, drop["task_id"])["status"] == "cancelled", timeout=10)
    assert status(local_stack, keep["task_id"])["status"] == "running"
    cancel(local_stack, keep["task_id"])


def test_high_priority_work_does_not_wait_behind_a_default_backlog(local_stack: Stack) -> None:
    # One user's backlog (8 requests: within a user's minute of requests); the urgent one
    # is an operator's (a priority above 0 is for the PriorityGroup, admins)
    me, ops = "backlog", "backlog-ops"
    # GIVEN more slow default-priority work than the default queue's workers (4 locally):
    # 20 s answers, so the first four hold their workers well past the time a new execution
    # environment may take to start (the urgent one may need a fresh one: several seconds
    # on a busy machine)
    slow = {"message": "backlog [[fake tokens=400 tps=20]]", "priority": 0}
    accepted = [post_chat(local_stack, slow, me) for _ in range(8)]
    assert {r.status_code for r in accepted} == {202}, [r.text for r in accepted]
    backlog = [r.json()["task_id"] for r in accepted]

    def running() -> int:
        return sum(status(local_stack, t, me)["status"] == "running" for t in backlog)

    wait_for(lambda: running() >= 4, timeout=40)  # may start environments: seconds each
    # WHEN a high-priority request arrives
    urgent_body = {"message": "urgent [[fake tokens=5]]", "priority": 9}
    urgent = post_chat(local_stack, urgent_body, ops, admin=True)
    assert urgent.status_code == 202, urgent.text
    urgent_id = urgent.json()["task_id"]
    wait_for(lambda: status(local_stack, urgent_id, ops)["status"] == "done", timeout=30)
    # THEN it was answered while default work was still waiting for a worker
    states = {t: status(local_stack, t, me)["status"] for t in backlog}
    waiting = [t for t, state in states.items() if state == "queued"]
    assert waiting, f"the backlog should still have queued work: {states}"
    started = {t: status(local_stack, t, me)["started_at"] for t in backlog}
    urgent_started = status(local_stack, urgent_id, ops)["started_at"]
    assert all(s is None or s > urgent_started for t, s in started.items() if t in waiting)
    for task_id in backlog:
        cancel(local_stack, task_id, me)
