"""`--lambda sam`'s plumbing: what the functions' containers are told, how SAM is started,
and how the poller reads the Invoke API's answers (SAM's included)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from localcloud import samlocal
from localcloud.poller_process import InvokeApi
from localcloud.runtime import HandlerError

pytestmark = pytest.mark.unit


def test_the_container_calls_this_machine_by_its_alias_and_the_viewer_keeps_loopback() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "AWS_ENDPOINT_URL_DYNAMODB": "http://localhost:8000",
        "QUEUE_URL_DEFAULT": "http://127.0.0.1:4566/123456789012/q-DefaultQueue",
        "DEAD_LETTER_QUEUE_URL": "http://127.0.0.1:4566/123456789012/q-DeadLetterQueue",
        "OPENAI_BASE_URL": "http://127.0.0.1:8009/v1",
        "AUTH_JWKS_URL": "http://127.0.0.1:4566/pool/.well-known/jwks.json",
        "REDIS_URL": "redis://:secret@127.0.0.1:6380/0",
        # for the viewer's browser, on this machine
        "STREAM_BASE_URL": "http://127.0.0.1:8008/",
        "AUTH_ISSUER": "https://cognito-idp.us-east-1.amazonaws.com/pool",
        "MODEL_ID": "gpt-4o-mini",
    }
    out = samlocal.in_container(env)
    assert out["AWS_ENDPOINT_URL"] == "http://host.docker.internal:4566"
    assert out["AWS_ENDPOINT_URL_DYNAMODB"] == "http://host.docker.internal:8000"
    assert (
        out["QUEUE_URL_DEFAULT"] == "http://host.docker.internal:4566/123456789012/q-DefaultQueue"
    )
    assert out["DEAD_LETTER_QUEUE_URL"].startswith("http://host.docker.internal:4566/")
    assert out["OPENAI_BASE_URL"] == "http://host.docker.internal:8009/v1"
    assert out["AUTH_JWKS_URL"] == "http://host.docker.internal:4566/pool/.well-known/jwks.json"
    assert out["REDIS_URL"] == "redis://:secret@host.docker.internal:6380/0"
    for same in ("STREAM_BASE_URL", "AUTH_ISSUER", "MODEL_ID"):
        assert out[same] == env[same]


def test_the_relay_carries_only_loopback_ports() -> None:
    urls = [
        "http://127.0.0.1:4566",
        "http://127.0.0.1:4566/queue",
        "http://localhost:8009/v1",
        "https://api.openai.com/v1",
        "redis://10.0.0.5:6379/0",
    ]
    assert samlocal.loopback_ports(urls) == [4566, 8009]


def test_sam_runs_the_source_template_in_x86_64_containers_of_the_built_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(samlocal, "sam", lambda: "sam")
    argv = samlocal.command(
        "start-lambda",
        host="127.0.0.1",
        port=3001,
        env_file=Path("/tmp/env.json"),
        image="llmstream-lambda-python3.12-0123:latest",
        parameters={"AllowedOrigin": "*", "LocalEndpointUrl": "http://host.docker.internal:4566"},
    )
    assert argv[:3] == ["sam", "local", "start-lambda"]
    overrides = argv[argv.index("--parameter-overrides") + 1].split()
    assert "Architecture=x86_64" in overrides
    assert "LocalEndpointUrl=http://host.docker.internal:4566" in overrides
    assert argv[argv.index("--invoke-image") + 1] == "llmstream-lambda-python3.12-0123:latest"
    assert "--skip-pull-image" in argv
    assert argv[argv.index("--add-host") + 1] == "host.docker.internal:host-gateway"
    # host networking cannot work: SAM reaches the emulator through a published port
    assert "--docker-network" not in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def invoke_api(payload: bytes, function_error: str | None = None) -> InvokeApi:
    api = InvokeApi("http://127.0.0.1:1", "WorkerFunction", timeout_seconds=20)
    stub = Stubber(api._client)
    answer = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(payload), len(payload))}
    if function_error:
        answer["FunctionError"] = function_error
    stub.add_response("invoke", answer)
    stub.activate()
    return api


def test_a_result_is_returned_and_a_function_error_fails_the_batch() -> None:
    result = {"batchItemFailures": [{"itemIdentifier": "m-2"}]}
    assert invoke_api(json.dumps(result).encode())({"Records": []}, None) == result
    error = {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 20.00 seconds"}
    with pytest.raises(HandlerError, match="timed out"):
        invoke_api(json.dumps(error).encode(), "Unhandled")({"Records": []}, None)


def test_an_empty_answer_is_no_result_not_a_success() -> None:
    # SAM stops a container at its Timeout and answers 200 with an empty body: deleting the
    # batch then would lose its messages.
    with pytest.raises(HandlerError, match="no result"):
        invoke_api(b"")({"Records": []}, None)
