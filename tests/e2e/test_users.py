"""Sign-in and ownership on the whole local stack: real user-pool tokens, both apps."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest

from localcloud.up import Stack
from tests.e2e.conftest import ANSWER_TOKENS, DAILY, SLOW, auth, described, stack_options, user
from tests.e2e.test_chat_flow import read_stream
from tests.stacklogs import wait_records

pytestmark = pytest.mark.e2e
PUBLIC = {("GET", "/health")}
PIN = "My secret bank PIN is 4321."


def routes(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (method, path) of an app's OpenAPI description, path ids filled in."""
    out = []
    for path, ops in spec["paths"].items():
        for method in ops:
            out.append((method.upper(), re.sub(r"\{[^}]+\}", uuid.uuid4().hex, path)))
    return out


def templated(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}


def wait_final(stack: Stack, task_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status: dict[str, Any] = httpx.get(
            f"{stack.urls['api']}/chat/{task_id}", headers=headers, timeout=10
        ).json()
        if status["status"] in ("done", "error", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not end")


def reason(body: dict[str, Any]) -> str:
    """An error's reason: ours ({"detail"}), or OpenAI's shape on /v1 ({"error": {"message"}})."""
    return str(body.get("detail") or (body.get("error") or {}).get("message") or "")


def test_anonymous_callers_get_401_on_every_route_but_health(local_stack: Stack) -> None:
    # GIVEN every route both apps describe (a new route is in the list by itself)
    checked = []
    for app in ("api", "stream"):
        base, spec = local_stack.urls[app], described(local_stack, app)
        paths = templated(spec)
        assert ("GET", "/health") in paths
        assert len(paths) >= (10 if app == "api" else 3)
        for method, path in routes(spec):
            if (method, path) in PUBLIC:
                continue
            # WHEN it is called with no credentials, or with a forged token
            for headers in ({}, {"Authorization": "Bearer a.b.c"}):
                resp = httpx.request(
                    method, f"{base}{path}", headers=headers, json={"message": "x"}, timeout=10
                )
                # THEN it is 401 with a reason, and the client is told to sign in
                assert resp.status_code == 401, (app, method, path, resp.text)
                assert reason(resp.json()), resp.text
                assert resp.headers["www-authenticate"] == "Bearer"
            checked.append((app, method, path))
        # AND /health answers anyone
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    assert len(checked) >= 12


def test_another_users_ids_are_not_found_on_every_route(local_stack: Stack) -> None:
    api, stream = local_stack.urls["api"], local_stack.urls["stream"]
    alice, bob = auth(local_stack, "alice"), auth(local_stack, "bob")
    fake = local_stack.urls["openai"].removesuffix("/v1")
    # GIVEN Alice's conversation, with a long answer still running
    first = httpx.post(f"{api}/chat", json={"message": PIN}, headers=alice, timeout=10)
    assert first.status_code == 202, first.text
    a = first.json()
    wait_final(local_stack, a["task_id"], alice)
    running = httpx.post(
        f"{api}/chat",
        json={"message": "go on [[fake tokens=400 tps=40]]", "session_id": a["session_id"]},
        headers=alice,
        timeout=10,
    ).json()
    # WHEN Bob follows the attack chain with Alice's ids
    # THEN every step is a 404, exactly as for ids that do not exist
    missing = uuid.uuid4().hex
    for task_id in (a["task_id"], running["task_id"], missing):
        assert httpx.get(f"{api}/chat/{task_id}", headers=bob).status_code == 404
        assert httpx.post(f"{api}/chat/{task_id}/cancel", headers=bob).status_code == 404
        assert httpx.get(f"{stream}/stream/{task_id}", headers=bob).status_code == 404
    for session_id in (a["session_id"], missing):
        assert httpx.get(f"{api}/sessions/{session_id}", headers=bob).status_code == 404
        assert httpx.delete(f"{api}/sessions/{session_id}", headers=bob).status_code == 404
        cont = httpx.post(
            f"{api}/chat",
            json={"message": "What was my PIN?", "session_id": session_id},
            headers=bob,
            timeout=10,
        )
        assert cont.status_code == 404, cont.text
    # AND Bob's own stream token opens his task only, never Alice's
    own = httpx.post(f"{api}/chat", json={"message": "mine"}, headers=bob, timeout=10).json()
    bob_token = own["stream_url"].split("token=", 1)[1]
    stolen = httpx.get(f"{stream}/stream/{a['task_id']}", params={"token": bob_token})
    assert stolen.status_code == 404
    # AND nothing of Alice's shows anywhere Bob looks
    listed = httpx.get(f"{api}/sessions", headers=bob).json()["sessions"]
    assert a["session_id"] not in {s["session_id"] for s in listed}
    assert all(PIN not in json.dumps(s) for s in listed)
    # AND Alice's answer was not cancelled by Bob: it still ends done, for her
    assert wait_final(local_stack, running["task_id"], alice)["status"] == "done"
    # AND the model never received Alice's history with a request of Bob's
    sent = httpx.get(f"{fake}/fake/conversations", timeout=10).json()["conversations"]
    assert [c for c in sent if any(m["content"] == "What was my PIN?" for m in c)] == []
    with_pin = [c for c in sent if any(PIN in (m.get("content") or "") for m in c)]
    assert with_pin, "the fake model records what it was sent"
    assert all(c[-1]["content"] in (PIN, "go on [[fake tokens=400 tps=40]]") for c in with_pin)
    # AND no component logged the secret or anyone's token
    secret_token = user(local_stack, "bob").access_token.split(".")[2]
    for log in (local_stack.opts.dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert PIN not in text and secret_token not in text, log


def test_a_user_reads_resumes_and_deletes_their_own_conversation(local_stack: Stack) -> None:
    api = local_stack.urls["api"]
    carol = auth(local_stack, "carol")
    # GIVEN a conversation of two turns
    one = httpx.post(f"{api}/chat", json={"message": "first"}, headers=carol).json()
    wait_final(local_stack, one["task_id"], carol)
    two = httpx.post(
        f"{api}/chat", json={"message": "second", "session_id": one["session_id"]}, headers=carol
    ).json()
    status = wait_final(local_stack, two["task_id"], carol)
    # THEN GET /chat gives the owner a fresh stream URL that replays the answer
    events = read_stream(status["stream_url"])
    assert json.loads(events[-1].data)["type"] == "done"
    # AND the owner's Bearer token opens the stream as well
    with httpx.Client(timeout=30) as client:
        resp = client.get(f"{local_stack.urls['stream']}/stream/{two['task_id']}", headers=carol)
        assert resp.status_code == 200 and '"type":"done"' in resp.text
    listed = httpx.get(f"{api}/sessions", headers=carol).json()["sessions"]
    mine = [s for s in listed if s["session_id"] == one["session_id"]]
    assert mine and mine[0]["turns"] == 2 and mine[0]["title"] == "first"
    # WHEN she deletes it
    assert httpx.delete(f"{api}/sessions/{one['session_id']}", headers=carol).status_code == 204
    # THEN the conversation, its turns and their streams are gone
    assert httpx.get(f"{api}/sessions/{one['session_id']}", headers=carol).status_code == 404
    assert httpx.get(f"{api}/chat/{two['task_id']}", headers=carol).status_code == 404
    assert httpx.get(status["stream_url"]).status_code == 404
    listed = httpx.get(f"{api}/sessions", headers=carol).json()["sessions"]
    assert one["session_id"] not in {s["session_id"] for s in listed}


def test_operator_routes_are_for_admins(local_stack: Stack) -> None:
    api = local_stack.urls["api"]
    for path in ("/stats", "/health/full", "/test"):
        # A signed-in user who is not an operator: 403 with the reason
        refused = httpx.get(f"{api}{path}", headers=auth(local_stack, "dave"), timeout=30)
        assert refused.status_code == 403, refused.text
        assert "admins" in refused.json()["detail"]
        ok = httpx.get(f"{api}{path}", headers=auth(local_stack, "ops", admin=True), timeout=30)
        assert ok.status_code == 200, ok.text
    # The operators' view names no task of anyone
    recent = httpx.get(f"{api}/stats", headers=auth(local_stack, "ops", admin=True)).json()
    assert all("task_id" not in t for t in recent["recent"])


@pytest.fixture(scope="module")
def quota_stack() -> Iterator[Stack]:
    """A stack whose users may make 5 requests a minute each."""
    opts = stack_options("e2e-quota", extra_env={"USER_RPM": "5", "USER_TOKENS_PER_DAY": "0"})
    stack = Stack(opts)
    stack.start()
    yield stack
    stack.stop()


def test_a_users_concurrent_requests_get_exactly_their_quota(quota_stack: Stack) -> None:
    api = quota_stack.urls["api"]
    erin = auth(quota_stack, "erin")

    def post(i: int) -> httpx.Response:
        return httpx.post(f"{api}/chat", json={"message": f"q{i}"}, headers=erin, timeout=30)

    # WHEN one user sends 12 requests at once
    began = time.time()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, range(12)))
    # THEN exactly 5 are accepted, the others are told why and when to come back
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 5 + [429] * 7, [r.text for r in answers]
    for refused in (r for r in answers if r.status_code == 429):
        assert int(refused.headers["retry-after"]) >= 1
        assert "request quota" in refused.json()["detail"]
    # AND the api counted each refusal (its metric records, as CloudWatch would read them)
    assert len(wait_records(quota_stack, "api", "RequestsRateLimited", 7, since=began)) == 7
    # AND another user is not held back by that
    frank = auth(quota_stack, "frank")
    assert httpx.post(f"{api}/chat", json={"message": "hi"}, headers=frank).status_code == 202
    # AND every accepted request still ends
    for ok in (r for r in answers if r.status_code == 202):
        assert wait_final(quota_stack, ok.json()["task_id"], erin)["status"] == "done"


def test_a_token_whose_payload_was_swapped_is_refused(local_stack: Stack) -> None:
    # GIVEN Mallory's token with Alice's claims put in it (her own signature kept)
    mallory = user(local_stack, "mallory").access_token.split(".")
    alice = user(local_stack, "alice").access_token.split(".")
    forged = ".".join([mallory[0], alice[1], mallory[2]])
    # THEN the signature does not match: 401, and nothing of Alice's is shown
    resp = httpx.get(
        f"{local_stack.urls['api']}/sessions", headers={"Authorization": f"Bearer {forged}"}
    )
    assert resp.status_code == 401, resp.text
    assert "signature" in resp.json()["detail"].lower()


def used_today(stack: Stack, name: str) -> int:
    """The user's tokens of the day, as the api reads them from the rate-limit table."""
    assert stack.template is not None
    table = stack.template.functions()["ApiFunction"].environment["RATE_LIMIT_TABLE"]
    sub = jwt.decode(user(stack, name).access_token, options={"verify_signature": False})["sub"]
    day = time.strftime("%Y%m%d", time.gmtime())
    got = stack.client("dynamodb").get_item(
        TableName=table, Key={"bucket": {"S": f"user-tokens#{sub}#{day}"}}, ConsistentRead=True
    )
    return int(got.get("Item", {}).get("used", {}).get("N", "0"))


def assert_refused_for_the_day(refused: httpx.Response) -> None:
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    assert "daily token quota" in refused.json()["detail"]


def ten_at_once_three_through(
    post: Callable[[int], httpx.Response], accepted: int
) -> list[httpx.Response]:
    """Ten requests at once against a day that fits three: three ``accepted``, seven
    refused for the day with the reason and until when."""
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(post, range(10)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [accepted] * 3 + [429] * 7, [r.text for r in answers]
    for refused in (r for r in answers if r.status_code == 429):
        assert_refused_for_the_day(refused)
    return answers


def test_concurrent_chats_get_exactly_the_tokens_of_their_day(token_quota_stack: Stack) -> None:
    api, gina = token_quota_stack.urls["api"], auth(token_quota_stack, "gina")

    def post(i: int) -> httpx.Response:
        body = {"message": f"q{i:02d} {SLOW}", "max_tokens": ANSWER_TOKENS}
        return httpx.post(f"{api}/chat", json=body, headers=gina, timeout=30)

    # GIVEN a day that fits 3 of her requests, WHEN she sends 10 at once
    # THEN exactly 3 are accepted, and the 7 that did not fit are told why and until when
    answers = ten_at_once_three_through(post, 202)
    # AND once the answers end, the day counts what the model reported: within the quota
    # (an answer may go over its estimate by at most its max_tokens)
    done = [
        wait_final(token_quota_stack, r.json()["task_id"], gina)
        for r in answers
        if r.status_code == 202
    ]
    assert [d["status"] for d in done] == ["done"] * 3
    used = used_today(token_quota_stack, "gina")
    assert used == sum(d["usage"]["total_tokens"] for d in done)
    assert used <= DAILY + ANSWER_TOKENS


def test_concurrent_embeddings_get_exactly_the_tokens_of_their_day(
    token_quota_stack: Stack,
) -> None:
    url, hal = f"{token_quota_stack.urls['api']}/embeddings", auth(token_quota_stack, "hal")
    # GIVEN requests of 4 inputs of 60 characters: 60 tokens as the model counts them,
    # so the day fits 3 of them
    per_request = 4 * 15
    assert 3 * per_request <= DAILY < 4 * per_request

    def post(i: int) -> httpx.Response:
        texts = [f"{i:02d}-{n}-".ljust(60, "x") for n in range(4)]
        return httpx.post(url, json={"input": texts}, headers=hal, timeout=30)

    # WHEN he sends 10 at once
    # THEN exactly 3 are answered, the others refused with the reason, and the day counts
    # what the model reported for the 3
    answers = ten_at_once_three_through(post, 200)
    reported = [r.json()["usage"]["total_tokens"] for r in answers if r.status_code == 200]
    assert reported == [per_request] * 3
    assert used_today(token_quota_stack, "hal") == 3 * per_request <= DAILY


def test_embeddings_that_fail_midway_are_charged_the_batches_sent(token_quota_stack: Stack) -> None:
    url, ivy = f"{token_quota_stack.urls['api']}/embeddings", auth(token_quota_stack, "ivy")
    # GIVEN batches of 2 (the stack's EMBEDDINGS_BATCH_SIZE), the second failing at the model
    texts = ["a" * 40, "b" * 40, "boom [[fake status=500]]", "d" * 40, "e" * 40]
    # WHEN they are embedded
    failed = httpx.post(url, json={"input": texts}, headers=ivy, timeout=30)
    # THEN the caller is told the model failed, and charged the first batch only (2 of 10)
    assert failed.status_code == 502, failed.text
    assert "model error" in failed.json()["detail"]
    assert used_today(token_quota_stack, "ivy") == 20
    # AND bad requests are refused before any model call, with the reason
    too_many = httpx.post(url, json={"input": ["a"] * 257}, headers=ivy, timeout=30)
    assert too_many.status_code == 422 and "at most 256" in too_many.json()["detail"]
    other = httpx.post(url, json={"input": ["a"], "model": "o3"}, headers=ivy, timeout=30)
    assert other.status_code == 422 and "text-embedding-3-small" in other.json()["detail"]
    assert used_today(token_quota_stack, "ivy") == 20


def test_a_priority_above_the_default_is_for_the_priority_group(token_quota_stack: Stack) -> None:
    api = token_quota_stack.urls["api"]
    urgent = {"message": "urgent", "priority": 9, "max_tokens": 5}
    refused = httpx.post(f"{api}/chat", json=urgent, headers=auth(token_quota_stack, "jay"))
    assert refused.status_code == 403 and "admins" in refused.json()["detail"]
    ops = auth(token_quota_stack, "ops", admin=True)
    assert httpx.post(f"{api}/chat", json=urgent, headers=ops).status_code == 202
