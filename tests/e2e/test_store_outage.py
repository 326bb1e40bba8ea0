"""The Redis chunk log goes away mid-answer and comes back, on the whole local stack."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from httpx_sse import connect_sse

from localcloud.up import Stack
from tests.e2e.conftest import auth
from tests.e2e.test_chat_flow import post_chat, read_stream

pytestmark = [pytest.mark.e2e, pytest.mark.processes]


def test_a_redis_outage_ends_streams_cleanly_and_the_answer_still_finishes(
    redis_stack: Stack,
) -> None:
    api = redis_stack.urls["api"]
    body = post_chat(redis_stack, {"message": "outage [[fake tokens=300 tps=50]]"}).json()
    seen: list[str] = []
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "GET", body["stream_url"]) as source,
    ):
        for sse in source.iter_sse():
            if sse.data:
                seen.append(sse.id)
            if len(seen) == 3:
                # WHEN the chunk log's server dies mid-answer
                redis_stack.kill("redis")
        # THEN the response ends cleanly (no cut body) and without a terminal event: the
        # client is to resume, as after any disconnect
    assert len(seen) >= 3
    # AND while the store is down a resumed stream ends at once, cleanly
    again = read_stream(body["stream_url"], headers={"Last-Event-ID": seen[-1]})
    assert again == []
    # WHEN the server is back (empty: it kept nothing on disk)
    redis_stack.revive("redis")
    # THEN the worker's attempt went back to the queue and a new one finishes the answer
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = httpx.get(
            f"{api}/chat/{body['task_id']}", headers=auth(redis_stack), timeout=10
        ).json()
        if status["status"] in ("done", "error", "cancelled"):
            break
        time.sleep(0.5)
    assert status["status"] == "done", status
    assert status["attempt"] >= 2  # the first attempt could not write: it was retried
    # AND a viewer reading from the start gets the new attempt's log, whole, ending in done
    events = read_stream(body["stream_url"])
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    assert json.loads(events[-1].data)["type"] == "done"
