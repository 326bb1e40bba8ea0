"""Shared rate limits on a whole local stack of their own (LLM_TPM=300): work over the
limit waits on its queue, then runs; every request still ends done."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from localcloud.up import Stack
from tests.e2e.conftest import auth, stack_options
from tests.e2e.test_chat_flow import read_stream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def limited_stack() -> Iterator[Stack]:
    opts = stack_options(
        "e2e-limits",
        fake_tokens=125,
        fake_ttft_ms=20.0,
        extra_env={"LLM_TPM": "300"},  # 5 tokens a second, shared by every worker
    )
    with Stack(opts) as stack:
        yield stack


def test_work_over_the_token_limit_waits_then_finishes(limited_stack: Stack) -> None:
    api, me = limited_stack.urls["api"], auth(limited_stack)
    # GIVEN three requests that each use ~130 tokens, as many as they may: the 300 in the
    # bucket (the model's shared limits) cover two, and the third needs ~90 more, ~18 s of
    # refill at 5 a second. So it waits however the answers overlap, at once or one after
    # the other (an answer that used all it may gives nothing back), unless it reaches the
    # model 18 s after the first two.
    accepted = [
        httpx.post(f"{api}/chat", json={"message": f"limited {i}", "max_tokens": 125}, headers=me)
        for i in range(3)
    ]
    assert {r.status_code for r in accepted} == {202}, [r.text for r in accepted]
    bodies = [r.json() for r in accepted]
    seen: dict[str, set[str]] = {b["task_id"]: set() for b in bodies}
    retry_at: list[float] = []

    def final(body: dict[str, str]) -> str:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            s = httpx.get(f"{api}/chat/{body['task_id']}", headers=me).json()
            seen[body["task_id"]].add(s["status"])
            if s.get("retry_at"):
                retry_at.append(s["retry_at"])
            if s["status"] in ("done", "error", "cancelled"):
                return str(s["status"])
            time.sleep(0.2)
        return "timeout"

    with ThreadPoolExecutor(len(bodies)) as pool:
        finals = list(pool.map(final, bodies))
    # THEN some waited for capacity (status waiting, with a retry time) and all finished
    assert finals == ["done"] * len(bodies)
    assert any("waiting" in states for states in seen.values()), seen
    assert retry_at
    # AND the streams of the ones that waited are whole
    for body in bodies:
        events = read_stream(body["stream_url"])
        assert json.loads(events[-1].data)["type"] == "done"
