"""`--lambda sam`: the api under `sam local start-api` and the worker under `sam local
start-lambda` (invoked by the stack's poller through the Lambda Invoke API), each
invocation in a Lambda container (the RIE and awslambdaric) with the function's Timeout
and MemorySize; the stream function on uvicorn. Runs wherever a Docker engine runs or
root can start one; the stack starts and stops dockerd itself if none runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from localcloud import samlocal
from localcloud.up import Stack, free_port
from tests.e2e.conftest import AWS_TARGET, auth, stack_options
from tests.e2e.test_chat_flow import answer_of, read_stream, text

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.processes]

WORKER_TIMEOUT = 20  # seconds: short, so an invocation that overruns it is quick to see
TOKENS = 30


def docker_unavailable() -> str | None:
    """Why `sam local` cannot run here, or None."""
    if AWS_TARGET != "moto":
        return f"--lambda sam runs on the moto target (this run: {AWS_TARGET})"
    if samlocal.engine_answers():
        return None
    if shutil.which("dockerd") is None:
        return (
            "no Docker engine here, and no dockerd to start (`./run.sh test` installs it as root)"
        )
    if os.geteuid() != 0:
        return "no Docker engine running here, and only root can start one"
    return None


@pytest.fixture(scope="module")
def sam_stack() -> Iterator[Stack]:
    if (why := docker_unavailable()) is not None:
        pytest.skip(why)
    opts = stack_options(
        "e2e-sam",
        functions="sam",
        workers=2,
        fake_tokens=TOKENS,
        parameters={"WorkerTimeout": str(WORKER_TIMEOUT)},
    )
    opts.ports.invoke = free_port()
    with Stack(opts) as stack:
        yield stack


@dataclass
class Hanging:
    message: str
    body: dict[str, str]
    seen: int  # the worker log's lines before it


@pytest.fixture(scope="module")
def hanging_chat(sam_stack: Stack) -> Hanging:
    """A chat whose model takes longer than the worker's Timeout to answer at all, once:
    posted before the other test, so the wait for its retry overlaps it."""
    seen = len(worker_lines(sam_stack))
    message = f"a hanging model [[fake hang_ms={(WORKER_TIMEOUT + 30) * 1000}]]"
    resp = httpx.post(
        f"{sam_stack.urls['api']}/chat",
        json={"message": message},
        headers=auth(sam_stack),
        timeout=120,
    )
    assert resp.status_code == 202, resp.text
    return Hanging(message, resp.json(), seen)


def worker_lines(stack: Stack) -> list[str]:
    """What the worker's containers printed (SAM relays it to its own log)."""
    return stack.log("worker-lambda").read_text(errors="replace").splitlines()


def wait_line(stack: Stack, since: int, match: Callable[[str], bool], timeout: float = 60) -> str:
    """The first line of the worker's log after line ``since`` that ``match``es, waiting
    for it: SAM relays what a container prints after the invocation it belongs to ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in worker_lines(stack)[since:]:
            if match(line):
                return line
        time.sleep(0.5)
    pytest.fail(f"no such line in the worker's log within {timeout:.0f}s")


def wait_final(stack: Stack, task_id: str, timeout: float = 150) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = httpx.get(f"{stack.urls['api']}/chat/{task_id}", headers=auth(stack), timeout=120)
        assert resp.status_code == 200, resp.text
        status = dict(resp.json())
        if status["status"] in ("done", "error", "cancelled"):
            return status
        time.sleep(1)
    pytest.fail(f"task {task_id} did not end within {timeout:.0f}s")


def test_a_chat_goes_through_lambda_containers_end_to_end(
    sam_stack: Stack, hanging_chat: Hanging
) -> None:
    api = sam_stack.urls["api"]
    seen = len(worker_lines(sam_stack))
    # WHEN a signed-in user posts a chat to `sam local start-api`
    resp = httpx.post(
        f"{api}/chat", json={"message": "hello containers"}, headers=auth(sam_stack), timeout=120
    )
    # THEN the api function, in its container, accepts it and points at the stream function
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["stream_url"].startswith(f"{sam_stack.urls['stream']}/stream/{body['task_id']}")
    # AND the answer streams whole, written by the worker in its container
    events = read_stream(body["stream_url"])
    assert json.loads(events[-1].data)["type"] == "done"
    assert text(events) == answer_of("hello containers", TOKENS)
    wait_line(sam_stack, seen, lambda line: body["task_id"] in line and "done" in line)
    wait_line(
        sam_stack,
        seen,
        lambda line: line.startswith("REPORT RequestId:") and "Memory Size: 256 MB" in line,
    )
    # AND not by the stack's own execution environments
    assert body["task_id"] not in sam_stack.log("worker").read_text(errors="replace")
    api_log = sam_stack.log("api").read_text(errors="replace")
    assert "REPORT RequestId:" in api_log and "Memory Size: 1024 MB" in api_log
    # AND without a sign-in the function in the container refuses
    anonymous = httpx.post(f"{api}/chat", json={"message": "hi"}, timeout=120)
    assert anonymous.status_code == 401, anonymous.text


def test_an_invocation_past_the_timeout_is_retried_and_the_answer_ends(
    sam_stack: Stack, hanging_chat: Hanging
) -> None:
    # GIVEN a model that takes longer than the worker's Timeout to answer at all, once
    body = hanging_chat.body
    # WHEN its first invocation overruns the Timeout: SAM stops the container
    final = wait_final(sam_stack, body["task_id"])
    timed_out = f"Function 'WorkerFunction' timed out after {WORKER_TIMEOUT} seconds"
    wait_line(sam_stack, hanging_chat.seen, lambda line: timed_out in line, timeout=5)
    # THEN the message came back, a second attempt answered, and the stream ends whole
    assert final["status"] == "done", final
    assert int(str(final["attempt"])) >= 2, final
    events = read_stream(body["stream_url"])
    assert json.loads(events[-1].data)["type"] == "done"
    assert final["text"] == answer_of(hanging_chat.message, TOKENS)
