"""The Lambda entry points with the events Lambda sends: the api function through Mangum
(an API Gateway HTTP API v2 event), against the emulator."""

from __future__ import annotations

import importlib
import json
import uuid
from typing import Any

import jwt
import pytest

from llmstream.settings import Settings
from localcloud.poller import LambdaContext
from localcloud.template import LocalTemplate
from localcloud.users import LocalUser, UserPool
from tests.integration.conftest import function_env, queued_task, received_event

pytestmark = pytest.mark.integration


def http_api_event(
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "ANY /{proxy+}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "api.example",
            **{k.lower(): v for k, v in (headers or {}).items()},
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "test",
            },
            "requestId": "r",
            "routeKey": "ANY /{proxy+}",
            "stage": "$default",
            "time": "21/Nov/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


@pytest.fixture
def api_module(stack: LocalTemplate, aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in function_env(stack, "ApiFunction", aws_endpoint).items():
        monkeypatch.setenv(key, value)
    from llmstream import auth, deps, settings

    caches = (settings.get_settings, settings.get_api_settings, deps.get_deps)
    for cached in (*caches, auth.get_authenticator):
        cached.cache_clear()
    import llmstream.api

    yield importlib.reload(llmstream.api)
    for cached in (*caches, auth.get_authenticator):
        cached.cache_clear()


def test_post_chat_through_mangum_records_and_enqueues(
    api_module: Any,
    stack: LocalTemplate,
    clients: dict[str, Any],
    settings: Settings,
    alice: LocalUser,
) -> None:
    ctx = LambdaContext(function_name="api", memory_limit_in_mb=512, timeout_seconds=29)
    anonymous = api_module.handler(http_api_event("POST", "/chat", {"message": "hi"}), ctx)
    assert anonymous["statusCode"] == 401
    assert anonymous["headers"]["www-authenticate"] == "Bearer"
    resp = api_module.handler(
        http_api_event("POST", "/chat", {"message": "via lambda"}, alice.headers), ctx
    )
    assert resp["statusCode"] == 202, resp
    body = json.loads(resp["body"])
    assert body["stream_url"].startswith(f"http://stream.invalid/stream/{body['task_id']}?token=")
    # The request row exists and the queue holds the task id.
    row = clients["dynamodb"].get_item(
        TableName=settings.requests_table, Key={"task_id": {"S": body["task_id"]}}
    )["Item"]
    assert row["status"]["S"] == "queued"
    assert (
        row["owner"]["S"]
        == jwt.decode(alice.access_token, options={"verify_signature": False})["sub"]
    )
    msgs = clients["sqs"].receive_message(
        QueueUrl=stack.queue_url("DefaultQueue"), MaxNumberOfMessages=10, WaitTimeSeconds=1
    )["Messages"]
    assert {"task_id": body["task_id"]} in [json.loads(m["Body"]) for m in msgs]

    bad = api_module.handler(http_api_event("POST", "/chat", {"message": ""}, alice.headers), ctx)
    assert bad["statusCode"] == 422
    health = api_module.handler(http_api_event("GET", "/health"), ctx)
    assert health["statusCode"] == 200


def test_keys_through_mangum_for_a_signed_in_user_only(
    api_module: Any, pool: UserPool, clients: dict[str, Any], stack: LocalTemplate
) -> None:
    ctx = LambdaContext(function_name="api", memory_limit_in_mb=512, timeout_seconds=29)
    carol = pool.ensure_user(f"carol-{uuid.uuid4().hex[:6]}")

    def call(method: str, path: str, body: Any = None, headers: Any = None) -> Any:
        resp = api_module.handler(http_api_event(method, path, body, headers), ctx)
        return resp["statusCode"], json.loads(resp["body"]) if resp.get("body") else None

    status, made = call("POST", "/keys", {"name": "  laptop  "}, carol.headers)
    assert status == 201, made
    assert made["name"] == "laptop" and made["key"].startswith(made["prefix"])
    assert made["key"].startswith(f"lls_{made['id']}_")
    status, listed = call("GET", "/keys", headers=carol.headers)
    assert status == 200
    assert listed == {
        "keys": [
            {k: made[k] for k in ("id", "name", "prefix", "created_at")} | {"last_used_at": None}
        ]
    }
    # A key is no sign-in: it may not mint, list or revoke keys, nor use the api's routes
    with_key = {"Authorization": f"Bearer {made['key']}"}
    for method, path in (("POST", "/keys"), ("GET", "/keys"), ("DELETE", f"/keys/{made['id']}")):
        status, body = call(method, path, {"name": "more"}, with_key)
        assert status == 403, (method, body)
        assert made["key"] not in json.dumps(body)
    assert call("GET", "/sessions", headers=with_key)[0] == 403
    # Bad input: a clear 4xx naming what is wrong
    assert call("POST", "/keys", {"name": ""}, carol.headers)[0] == 422
    assert call("POST", "/keys", {"name": "x" * 65}, carol.headers)[0] == 422
    assert call("POST", "/keys", {"name": "a\nb"}, carol.headers)[0] == 422
    assert call("POST", "/keys", {"name": "k", "scope": "all"}, carol.headers)[0] == 422
    assert call("DELETE", "/keys/not-a-key-id", headers=carol.headers)[0] == 422
    # Revoked once: 204, then 404; and it is gone from the list
    assert call("DELETE", f"/keys/{made['id']}", headers=carol.headers)[0] == 204
    assert call("DELETE", f"/keys/{made['id']}", headers=carol.headers)[0] == 404
    assert call("GET", "/keys", headers=carol.headers)[1] == {"keys": []}
    assert call("GET", "/keys")[0] == 401


def test_me_tells_the_page_what_the_caller_may_ask_for(
    api_module: Any, alice: LocalUser, pool: UserPool
) -> None:
    ctx = LambdaContext(function_name="api", memory_limit_in_mb=512, timeout_seconds=29)
    operator = pool.ensure_user("me-operator", admin=True)
    answers = {
        name: api_module.handler(http_api_event("GET", "/me", headers=who.headers), ctx)
        for name, who in (("alice", alice), ("operator", operator))
    }
    assert {a["statusCode"] for a in answers.values()} == {200}
    # A user: priorities up to 0 (above is the PriorityGroup's), no operator routes
    assert json.loads(answers["alice"]["body"]) == {
        "username": "alice",
        "groups": [],
        "operator": False,
        "max_priority": 0,
    }
    # An operator (in admins, the default PriorityGroup): the high priorities too
    body = json.loads(answers["operator"]["body"])
    assert (body["operator"], body["max_priority"], body["groups"]) == (True, 10, ["admins"])
    assert api_module.handler(http_api_event("GET", "/me"), ctx)["statusCode"] == 401


def test_the_local_user_pool_signs_tokens_as_cognito_does(
    api_module: Any, alice: LocalUser
) -> None:
    # The local stack's issuer has Cognito's form, so the functions require token_use of
    # its tokens as of a real pool's: the local pool's tokens carry it, and pass.
    from llmstream.auth import get_authenticator, is_cognito
    from llmstream.settings import get_settings

    assert is_cognito(get_settings().auth_issuer)
    access = jwt.decode(alice.access_token, options={"verify_signature": False})
    assert access["token_use"] == "access"
    assert jwt.decode(alice.id_token, options={"verify_signature": False})["token_use"] == "id"
    assert get_authenticator().authenticate(f"Bearer {alice.access_token}").sub == access["sub"]


@pytest.fixture
def worker_module(
    stack: LocalTemplate, aws_endpoint: str, fake_openai_url: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    env = {
        **function_env(stack, "WorkerFunction", aws_endpoint),
        "LLM_RPM": "1",
        "OPENAI_BASE_URL": fake_openai_url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from llmstream import deps, settings, vault

    caches = (settings.get_settings, deps.get_deps, vault.read_secret)
    for cached in caches:
        cached.cache_clear()
    import llmstream.worker

    yield importlib.reload(llmstream.worker)
    for cached in caches:
        cached.cache_clear()


def test_worker_handler_requeues_a_rate_limited_task_with_a_delay(
    worker_module: Any, stack: LocalTemplate, clients: dict[str, Any]
) -> None:
    from llmstream.deps import get_deps
    from llmstream.limits import Bucket

    deps = get_deps()
    deps.limits.buckets.take(Bucket("model-rpm", 1), 1)  # the minute's one request is gone
    task = queued_task(deps, session_id="s", message="later please", owner="sub-handler-tests")
    sqs, queue = clients["sqs"], stack.queue_url("LowQueue")
    event = received_event(stack, sqs, "LowQueue", task.task_id)
    ctx = LambdaContext(function_name="worker", memory_limit_in_mb=512, timeout_seconds=300)
    # WHEN the worker function gets the task while over the limit
    result = worker_module.handler(event, ctx)
    # THEN the record succeeds (no step toward the DLQ) and a delayed copy waits on the queue
    assert result == {"batchItemFailures": []}
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )
    assert int(attrs["Attributes"]["ApproximateNumberOfMessagesDelayed"]) == 1
    assert deps.tasks.get(task.task_id).status == "waiting"
