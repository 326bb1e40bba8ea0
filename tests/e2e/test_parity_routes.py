"""The routes the older services had: sessions, /health/full, /stats, /test, /embeddings,
direct mode and the OpenAPI docs, on the whole local stack."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from localcloud.fake_openai import Behaviour, expected_answer, fake_embedding
from localcloud.up import Stack
from tests.e2e.conftest import FAKE_TOKENS, auth, described
from tests.e2e.test_chat_flow import admin_auth, post_chat, read_stream, text

pytestmark = pytest.mark.e2e
FAKE = Behaviour(tokens=FAKE_TOKENS)


def operators_get(stack: Stack, path: str) -> Any:
    """GET an operators' route of the api: refused without a token (401) and to a user
    outside the admins group (403); an operator's answer (200) as JSON."""
    url = f"{stack.urls['api']}{path}"
    assert httpx.get(url, timeout=30).status_code == 401, path
    assert httpx.get(url, headers=auth(stack), timeout=30).status_code == 403, path
    resp = httpx.get(url, headers=admin_auth(stack), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_session_carries_its_history(local_stack: Stack) -> None:
    api, me = local_stack.urls["api"], auth(local_stack)
    # GIVEN two turns of one conversation, the second sent after the first answered (a
    # conversation starts without a session_id; its id comes back with the first turn)
    first = post_chat(local_stack, {"message": "my name is Ada"}).json()
    sid = first["session_id"]
    answer1 = text(read_stream(first["stream_url"]))
    second = post_chat(local_stack, {"message": "what is my name?", "session_id": sid}).json()
    assert second["session_id"] == sid
    answer2 = text(read_stream(second["stream_url"]))
    # THEN the second answer is the model's answer to the whole conversation
    assert answer2 == expected_answer(
        [
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": answer1},
            {"role": "user", "content": "what is my name?"},
        ],
        behaviour=FAKE,
    )
    # AND GET /sessions/{id} lists the turns in order with their answers
    history = httpx.get(f"{api}/sessions/{sid}", headers=me).json()
    assert [t["task_id"] for t in history["turns"]] == [first["task_id"], second["task_id"]]
    assert [t["answer"] for t in history["turns"]] == [answer1, answer2]
    assert httpx.get(f"{api}/sessions/nobody-{uuid.uuid4().hex[:6]}", headers=me).status_code == 404
    # AND GET /sessions lists it, with its turns
    mine = httpx.get(f"{api}/sessions", headers=me).json()["sessions"]
    assert {"session_id": sid, "turns": 2}.items() <= next(
        s for s in mine if s["session_id"] == sid
    ).items()
    # AND to another user the conversation does not exist: not to read, list or continue
    other = auth(local_stack, "e2e-other")
    assert httpx.get(f"{api}/sessions/{sid}", headers=other).status_code == 404
    theirs = httpx.get(f"{api}/sessions", headers=other).json()["sessions"]
    assert sid not in {s["session_id"] for s in theirs}
    intruder = post_chat(local_stack, {"message": "me too", "session_id": sid}, "e2e-other")
    assert intruder.status_code == 404
    # AND a client-made id is no conversation: ids are the service's
    made_up = post_chat(local_stack, {"message": "hi", "session_id": f"s-{uuid.uuid4().hex[:8]}"})
    assert made_up.status_code == 404
    assert httpx.get(f"{api}/sessions/{sid}").status_code == 401


def test_health_full_reports_every_dependency(local_stack: Stack) -> None:
    body = operators_get(local_stack, "/health/full")
    assert body["status"] == "ok"
    assert set(body["tables"]) == {"requests", "chunks"}
    assert set(body["queues"]) == {"high", "default", "low", "dead_letter"}
    for check in [*body["tables"].values(), *body["queues"].values(), body["model"]]:
        assert check["ok"] and check["latency_ms"] >= 0
    assert body["queues"]["dead_letter"]["depth"]["visible"] >= 0


def test_stats_show_depths_statuses_and_speed(local_stack: Stack) -> None:
    for priority in (9, 0, -9):
        # (a priority above 0 is for the operators' group: PriorityGroup)
        body = post_chat(
            local_stack,
            {"message": f"stats {priority}", "priority": priority},
            "e2e-stats-ops" if priority > 0 else "e2e-stats",
            admin=priority > 0,
        )
        read_stream(body.json()["stream_url"])
    stats = operators_get(local_stack, "/stats")
    assert set(stats["queues"]) == {"high", "default", "low", "dead_letter"}
    assert stats["requests"].get("done", 0) >= 3
    assert {"high", "default", "low"} <= set(stats["by_priority"])
    assert stats["ttft_seconds"]["count"] >= 3 and stats["ttft_seconds"]["p50"] > 0
    assert stats["tokens_per_second"]["count"] >= 3 and stats["tokens_per_second"]["p95"] > 0
    assert stats["recent"][0]["status"] in (
        "queued",
        "waiting",
        "running",
        "done",
        "error",
        "cancelled",
    )
    # the newest tasks are counted, not named: no task ids (other users' tasks) in /stats
    assert all("task_id" not in r for r in stats["recent"])


def test_model_test_route(local_stack: Stack) -> None:
    body = operators_get(local_stack, "/test")
    assert body["ok"] is True and body["reply"] and body["latency_ms"] > 0


def test_embeddings_are_split_to_the_batch_limit_and_keep_order(local_stack: Stack) -> None:
    fake = local_stack.urls["openai"].removesuffix("/v1")
    before = httpx.get(f"{fake}/fake/stats").json()["embedding_requests"]
    url, me = f"{local_stack.urls['api']}/embeddings", auth(local_stack)
    texts = ["alpha", "beta", "gamma", "delta", "epsilon"]
    assert httpx.post(url, json={"input": texts}, timeout=30).status_code == 401
    resp = httpx.post(url, json={"input": texts}, headers=me, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3, 4]
    for item, text_ in zip(body["data"], texts, strict=True):
        assert item["embedding"] == pytest.approx(fake_embedding(text_))
    # EMBEDDINGS_BATCH_SIZE is 2 on the e2e stack: 5 inputs take 3 model calls.
    assert body["batches"] == 3
    assert httpx.get(f"{fake}/fake/stats").json()["embedding_requests"] - before == 3
    for bad in ({"input": []}, {"input": [""]}, {"texts": ["a"]}):
        assert httpx.post(url, json=bad, headers=me).status_code == 422


def test_direct_mode_streams_plain_text(local_stack: Stack) -> None:
    url, me = f"{local_stack.urls['stream']}/direct", auth(local_stack)
    with httpx.stream(
        "POST",
        url,
        json={"message": "direct please", "session_id": "direct-1"},
        headers=me,
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        assert resp.headers["x-session-id"] == "direct-1"
        pieces = list(resp.iter_text())
    assert len(pieces) > 1  # streamed, not one body
    assert "".join(pieces) == expected_answer(
        [{"role": "user", "content": "direct please"}], behaviour=FAKE
    )
    bad = httpx.post(url, json={"message": ""}, headers=me)
    assert bad.status_code == 422
    assert httpx.post(url, json={"message": "direct please"}).status_code == 401


def test_docs_list_every_route_with_its_models(local_stack: Stack) -> None:
    api = httpx.get(f"{local_stack.urls['api']}/openapi.json").json()
    routes = {(path, method) for path, ops in api["paths"].items() for method in ops}
    assert routes >= {
        ("/chat", "post"),
        ("/chat/{task_id}", "get"),
        ("/chat/{task_id}/cancel", "post"),
        ("/sessions", "get"),
        ("/sessions/{session_id}", "get"),
        ("/sessions/{session_id}", "delete"),
        ("/health", "get"),
        ("/health/full", "get"),
        ("/stats", "get"),
        ("/test", "get"),
        ("/embeddings", "post"),
        ("/me", "get"),
    }
    for path, method in routes:
        op = api["paths"][path][method]
        ok = next(code for code in op["responses"] if code.startswith("2"))
        if ok != "204":  # No Content has no body to describe
            assert "schema" in json.dumps(op["responses"][ok]), (path, method)
        # every route but the liveness check names the bearer it needs
        assert ("security" in op) == (path != "/health"), (path, method)
    assert "requestBody" in api["paths"]["/chat"]["post"]
    assert httpx.get(f"{local_stack.urls['api']}/docs").status_code == 200
    stream = described(local_stack, "stream")
    assert {"/stream/{task_id}", "/direct", "/health"} <= set(stream["paths"])


def test_the_public_stream_url_describes_nothing(local_stack: Stack) -> None:
    # The stream function URL is open to anyone (AuthType NONE): no docs, no schema there.
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert httpx.get(f"{local_stack.urls['stream']}{path}").status_code == 404, path
    assert httpx.get(f"{local_stack.urls['stream']}/health").status_code == 200


def test_idempotency_key_returns_the_same_task_and_one_model_call(local_stack: Stack) -> None:
    fake = local_stack.urls["openai"].removesuffix("/v1")
    me = "e2e-idempotent"
    key = f"key-{uuid.uuid4().hex}"
    body = {"message": "only once please"}
    before = httpx.get(f"{fake}/fake/stats").json()["chat_requests"]
    # WHEN the client sends the same request with the same key three times
    answers = [post_chat(local_stack, body, me, {"Idempotency-Key": key}) for _ in range(3)]
    # THEN every answer names the same task, whose stream works
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["task_id"] for r in answers}) == 1
    assert text(read_stream(answers[-1].json()["stream_url"])) == expected_answer(
        [{"role": "user", "content": "only once please"}], behaviour=FAKE
    )
    # AND the model was called once
    assert httpx.get(f"{fake}/fake/stats").json()["chat_requests"] - before == 1
    # AND the key cannot be reused for another request; another key is another task
    other = post_chat(local_stack, {"message": "something else"}, me, {"Idempotency-Key": key})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    fresh = post_chat(local_stack, body, me, {"Idempotency-Key": key + "-2"})
    assert fresh.json()["task_id"] != answers[0].json()["task_id"]
    read_stream(fresh.json()["stream_url"])
    # AND keys are each user's own: another user's same key and body is another task
    theirs = post_chat(local_stack, body, "e2e-other", {"Idempotency-Key": key})
    assert theirs.status_code == 202
    assert theirs.json()["task_id"] != answers[0].json()["task_id"]
    read_stream(theirs.json()["stream_url"])
    bad = post_chat(local_stack, body, me, {"Idempotency-Key": "has space"})
    assert bad.status_code == 422


def test_a_model_the_deployment_does_not_offer_is_refused_with_the_list(
    local_stack: Stack,
) -> None:
    # The template's AllowedModels is empty by default: every request gets ModelId.
    for path, body in (
        ("/chat", {"message": "hi", "model": "o3-pro"}),
        ("/direct", {"message": "hi", "model": "o3-pro"}),
    ):
        base = local_stack.urls["api" if path == "/chat" else "stream"]
        resp = httpx.post(f"{base}{path}", json=body, headers=auth(local_stack), timeout=30)
        assert resp.status_code == 422, (path, resp.text)
        assert "'o3-pro' is not offered here; choose one of: gpt-4o-mini" in resp.text
    # naming the default model itself is fine
    resp = post_chat(local_stack, {"message": "hi", "model": "gpt-4o-mini"})
    assert resp.status_code == 202, resp.text
