"""POST /chat -> SQS -> worker -> chunk log -> SSE, on the whole local stack."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import ServerSentEvent, connect_sse

from localcloud.fake_openai import Behaviour, expected_answer
from localcloud.up import Stack
from tests.e2e.conftest import DEFAULT_USER, FAKE_TOKENS, auth

pytestmark = pytest.mark.e2e
ADMIN_USER = "e2e-admin"


def post_chat(
    stack: Stack,
    body: dict[str, Any],
    user: str = DEFAULT_USER,
    headers: dict[str, str] | None = None,
    *,
    admin: bool = False,
) -> httpx.Response:
    """POST /chat as ``user`` (signed in on ``stack``; ``admin``: an operator, who may ask
    for a priority above 0), with any further ``headers``."""
    return httpx.post(
        f"{stack.urls['api']}/chat",
        json=body,
        headers={**auth(stack, user, admin=admin), **(headers or {})},
        timeout=10,
    )


def admin_auth(stack: Stack) -> dict[str, str]:
    """The Authorization header of an operator (the admins group: /stats, /health/full, /test).
    A user of its own: group membership is the user's, so a user made an admin stays one."""
    return auth(stack, ADMIN_USER, admin=True)


def get_status(stack: Stack, task_id: str, user: str = DEFAULT_USER) -> dict[str, Any]:
    """GET /chat/{task_id} as ``user``, who must own the task."""
    resp = httpx.get(f"{stack.urls['api']}/chat/{task_id}", headers=auth(stack, user), timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def answer_of(message: str, tokens: int = FAKE_TOKENS) -> str:
    return expected_answer(
        [{"role": "user", "content": message}], behaviour=Behaviour(tokens=tokens)
    )


def read_stream(
    url: str, headers: dict[str, str] | None = None, stop_after: int | None = None
) -> list[ServerSentEvent]:
    events: list[ServerSentEvent] = []
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "GET", url, headers=headers or {}) as source,
    ):
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            events.append(sse)
            if stop_after is not None and len(events) >= stop_after:
                break  # drop the connection mid-answer
    return events


def text(events: list[ServerSentEvent]) -> str:
    return "".join(json.loads(e.data).get("chunk", "") for e in events)


def test_chat_answer_arrives_whole_over_sse(chat_stack: Stack) -> None:
    # GIVEN a chat request
    resp = post_chat(chat_stack, {"message": "hi"})
    # THEN it is accepted at once with a task, a session and a signed stream URL
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued"
    assert body["stream_url"].startswith(f"{chat_stack.urls['stream']}/stream/{body['task_id']}")
    assert "token=" in body["stream_url"]
    # WHEN the client follows the stream
    events = read_stream(body["stream_url"])
    # THEN every event has id = seq, the text is the model's answer, and it ends in done
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    assert text(events) == answer_of("hi")
    final = json.loads(events[-1].data)
    assert final["type"] == "done" and final["usage"]["completion_tokens"] == FAKE_TOKENS
    assert all("chunk" in json.loads(e.data) for e in events[:-1])
    # AND the status endpoint agrees, with a fresh stream URL that replays the same events
    status = get_status(chat_stack, body["task_id"])
    assert status["status"] == "done"
    assert status["text"] == answer_of("hi")
    assert status["session_id"] == body["session_id"]
    assert status["usage"]["completion_tokens"] == FAKE_TOKENS
    assert status["last_seq"] == len(events)
    assert status["stream_url"].startswith(f"{chat_stack.urls['stream']}/stream/{body['task_id']}?")
    assert "token=" in status["stream_url"]
    assert [(e.id, e.data) for e in read_stream(status["stream_url"])] == [
        (e.id, e.data) for e in events
    ]


@pytest.mark.parametrize("how", ["last-event-id", "after"])
def test_resume_gets_exactly_the_events_after_n(chat_stack: Stack, how: str) -> None:
    message = "resume me [[fake tokens=120 tps=60]]"
    body = post_chat(chat_stack, {"message": message}).json()
    url = body["stream_url"]
    # GIVEN a viewer that dropped the connection after 3 events, mid-answer
    first = read_stream(url, stop_after=3)
    n = int(first[-1].id)
    assert n == 3
    # WHEN it reconnects from n
    if how == "last-event-id":
        rest = read_stream(url, headers={"Last-Event-ID": str(n)})
    else:
        rest = read_stream(f"{url}&after={n}")
    # THEN it gets exactly n+1.. up to the terminal event: nothing lost, nothing repeated
    assert [int(e.id) for e in rest] == list(range(n + 1, n + 1 + len(rest)))
    assert json.loads(rest[-1].data)["type"] == "done"
    assert text(first + rest) == answer_of(message, tokens=120)


def test_several_viewers_get_identical_events(chat_stack: Stack) -> None:
    body = post_chat(chat_stack, {"message": "two viewers [[fake tokens=80 tps=80]]"}).json()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: read_stream(body["stream_url"]), range(3)))
    as_tuples = [[(e.id, e.data) for e in r] for r in results]
    assert as_tuples[0] == as_tuples[1] == as_tuples[2]
    assert json.loads(results[0][-1].data)["type"] == "done"


def test_every_accepted_request_ends_in_a_terminal_state(chat_stack: Stack) -> None:
    # GIVEN more concurrent requests than local workers, one of which the model fails,
    # from several users (as real load is; one user's request quota is not what is tested)
    messages = [f"load {i} [[fake tokens=30 tps=150]]" for i in range(9)]
    messages.append("fail [[fake status=500]]")
    users = [f"load-{i % 5}" for i in range(len(messages))]
    for name in set(users):
        auth(chat_stack, name)  # signed in once, before the threads
    with ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(lambda m, u: post_chat(chat_stack, {"message": m}, u), messages, users)
        )
        assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
        bodies = [r.json() for r in responses]
        finals = list(pool.map(lambda b: json.loads(read_stream(b["stream_url"])[-1].data), bodies))
    # THEN every stream ended with a terminal event, and the statuses match
    assert [f["type"] for f in finals] == ["done"] * 9 + ["error"]
    for body, final, name in zip(bodies, finals, users, strict=True):
        assert get_status(chat_stack, body["task_id"], name)["status"] == final["type"]
    assert "500" in finals[-1]["message"]


def test_on_redis_the_answer_is_in_a_redis_stream_not_dynamodb(redis_stack: Stack) -> None:
    body = post_chat(redis_stack, {"message": "where do you live"}).json()
    events = read_stream(body["stream_url"])
    assert json.loads(events[-1].data)["type"] == "done"
    # The worker wrote the events to the task's stream, one entry per event, IDs 0-<seq>
    r = redis.Redis.from_url(redis_stack.urls["redis"], decode_responses=True)
    entries = r.xrange(f"llmstream:{{{body['task_id']}}}:chunks")
    assert [e[0] for e in entries] == [f"0-{e.id}" for e in events]
    assert r.ttl(f"llmstream:{{{body['task_id']}}}:chunks") > 0
    # and nothing to the chunks table
    assert redis_stack.template is not None
    table = redis_stack.template.functions()["WorkerFunction"].environment["CHUNKS_TABLE"]
    ddb = redis_stack.client("dynamodb")
    got = ddb.get_item(TableName=table, Key={"task_id": {"S": body["task_id"]}, "seq": {"N": "1"}})
    assert "Item" not in got
    # The health check looks at Redis for the chunk log
    health = httpx.get(
        f"{redis_stack.urls['api']}/health/full", headers=admin_auth(redis_stack), timeout=10
    ).json()
    assert (
        health["tables"]["chunks"]["ok"] and health["tables"]["chunks"]["detail"] == "redis: PONG"
    )


def test_stream_refuses_missing_or_bad_tokens(local_stack: Stack) -> None:
    a = post_chat(local_stack, {"message": "a"}).json()
    b = post_chat(local_stack, {"message": "b"}).json()
    base = f"{local_stack.urls['stream']}/stream/{a['task_id']}"
    token_a = a["stream_url"].split("token=")[1]
    token_b = b["stream_url"].split("token=")[1]
    assert httpx.get(base).status_code == 401  # neither a token nor a bearer
    # A token that does not open this task is answered as a task that does not exist.
    assert httpx.get(f"{base}?token=1.forged").status_code == 404
    assert httpx.get(f"{base}?token={token_b}").status_code == 404  # another task's token
    # The owner's bearer works as well as the query parameter; another user's does not,
    # and a stream token is no bearer.
    assert httpx.get(base, headers=auth(local_stack, "e2e-other")).status_code == 404
    assert httpx.get(base, headers={"Authorization": f"Bearer {token_a}"}).status_code == 401
    assert len(read_stream(base, headers=auth(local_stack))) > 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"message": ""}, "message"),
        ({"message": "hi", "priority": 99}, "priority"),
        ({"text": "hi"}, "message"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_reason(
    local_stack: Stack, body: dict[str, Any], reason: str
) -> None:
    resp = post_chat(local_stack, body)
    assert resp.status_code == 422
    assert reason in json.dumps(resp.json()["detail"])


def test_not_json_and_unknown_ids(local_stack: Stack) -> None:
    api, stream = local_stack.urls["api"], local_stack.urls["stream"]
    me = auth(local_stack)
    resp = httpx.post(
        f"{api}/chat", content=b"not json", headers={**me, "content-type": "application/json"}
    )
    assert resp.status_code == 422
    missing = "0" * 32
    assert httpx.get(f"{api}/chat/{missing}", headers=me).status_code == 404
    assert httpx.get(f"{api}/chat/bad id!", headers=me).status_code == 422
    ok = post_chat(local_stack, {"message": "x"}).json()
    # Without a sign-in nothing is answered; another user's task does not exist for them.
    unsigned = httpx.post(f"{api}/chat", json={"message": "x"})
    assert unsigned.status_code == 401 and unsigned.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{api}/chat/{ok['task_id']}").status_code == 401
    garbage = {"Authorization": "Bearer not.a.jwt"}
    assert httpx.get(f"{api}/chat/{ok['task_id']}", headers=garbage).status_code == 401
    other = auth(local_stack, "e2e-other")
    assert httpx.get(f"{api}/chat/{ok['task_id']}", headers=other).status_code == 404
    assert httpx.post(f"{api}/chat/{ok['task_id']}/cancel", headers=other).status_code == 404
    token = ok["stream_url"].split("token=")[1]
    bad_resume = httpx.get(
        f"{stream}/stream/{ok['task_id']}?token={token}", headers={"Last-Event-ID": "abc"}
    )
    assert bad_resume.status_code == 400


def test_health_and_cors(local_stack: Stack) -> None:
    assert httpx.get(f"{local_stack.urls['api']}/health").json()["status"] == "ok"
    assert httpx.get(f"{local_stack.urls['stream']}/health").json()["status"] == "ok"
    pre = httpx.options(
        f"{local_stack.urls['api']}/chat",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()


def test_frontend_is_served_with_its_config(local_stack: Stack) -> None:
    front = local_stack.urls["frontend"]
    assert "<title>llmstream" in httpx.get(f"{front}/").text
    config = httpx.get(f"{front}/config.json").json()
    assert config == {
        "apiUrl": local_stack.urls["api"],
        "streamUrl": local_stack.urls["stream"],
        "auth": local_stack.auth_config,
    }


def test_the_readme_curl_commands(local_stack: Stack) -> None:
    """README: curl POST /chat with a bearer answers 202; curl -N <stream_url> prints chunks,
    then done."""
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        [
            curl,
            "-s",
            "-X",
            "POST",
            f"{local_stack.urls['api']}/chat",
            "-H",
            f"authorization: {auth(local_stack)['Authorization']}",
            "-H",
            "content-type: application/json",
            "-d",
            '{"message":"hi"}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    body = json.loads(out)
    assert {"task_id", "stream_url"} <= body.keys()
    sse = subprocess.run(
        [curl, "-sN", body["stream_url"]], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    data = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: ")]
    assert data[0] == {"chunk": "You"}
    assert data[-1]["type"] == "done"
    assert "".join(d.get("chunk", "") for d in data) == answer_of("hi")
