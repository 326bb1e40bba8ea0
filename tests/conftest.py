"""Shared fixtures. Integration and e2e tests talk to real processes over HTTP: a moto
server, a redis-server, the fake OpenAI server (through the real openai SDK), uvicorn apps."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.options import StartError, free_port
from localcloud.redis_server import redis_answers, redis_server_command

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

# The functions' required settings, as the template gives them (values that only need to
# be valid): for tests that build Settings or import an app without a stack.
FUNCTION_ENV = {
    "REQUESTS_TABLE": "r",
    "SESSIONS_TABLE": "s",
    "CHUNKS_TABLE": "c",
    "QUEUE_URL_HIGH": "http://high",
    "QUEUE_URL_DEFAULT": "http://default",
    "QUEUE_URL_LOW": "http://low",
    "DEAD_LETTER_QUEUE_URL": "http://dlq",
    "IDEMPOTENCY_TABLE": "i",
    "RATE_LIMIT_TABLE": "l",
    "MODEL_ID": "m",
    "STREAM_TOKEN_SECRET": "s" * 32,
    "CORS_ALLOW_ORIGINS": "*",
    "AUTH_ISSUER": "https://issuer.example/pool",
    "AUTH_AUDIENCE": "client-a, client-b",
}


def app_openapi(module: str) -> dict[str, Any]:
    """The OpenAPI description of an app (``llmstream.stream``, ``llmstream.api``), built
    in-process from its route table, as FastAPI would serve it: the stream function URL is
    public and serves none."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in FUNCTION_ENV.items():
            env.setenv(key, value)
        app = importlib.import_module(module).app
    return dict(app.openapi())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def spawn(argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / f"{name}.log").open("wb")
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ)
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    """The local AWS endpoint (moto server) on a free port, for this test session only."""
    port = free_port()
    proc = spawn([sys.executable, "-m", "localcloud", "aws", "--port", str(port)], "moto")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/moto-api/data.json", proc)
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of this test session's own (the Redis Streams chunk log)."""
    port = free_port()
    try:
        argv = redis_server_command("127.0.0.1", port, ARTIFACTS)
    except StartError as e:
        pytest.fail(str(e))
    proc = spawn(argv, "redis")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start: {ARTIFACTS}/redis.log")
        time.sleep(0.05)
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def fake_openai_url() -> Iterator[str]:
    """The fake OpenAI server: fast, so integration tests do not wait on it."""
    port = free_port()
    proc = spawn(
        [
            sys.executable,
            "-m",
            "localcloud",
            "fake-openai",
            "--port",
            str(port),
            "--tokens",
            "40",
            "--tps",
            "400",
            "--ttft-ms",
            "20",
        ],
        "fake-openai",
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    yield f"http://127.0.0.1:{port}/v1"
    stop(proc)
