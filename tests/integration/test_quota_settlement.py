"""The ways an answer can end without the usual settlement still leave its owner's day
right: a worker killed mid-answer (a real child process, as Lambda runs one), the last
delivery before the dead-letter queue, and a direct-mode response whose text never starts.
On the emulator, with the fake model (docs/quotas.md)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import jwt
import pytest

from llmstream import reservations
from llmstream.answer import run_task
from llmstream.deps import Deps
from llmstream.limits import estimate_tokens
from llmstream.llm import build_messages
from llmstream.tasks import Task
from localcloud.runtime import EnvironmentDied, EnvironmentPool
from localcloud.template import LocalTemplate
from localcloud.users import LocalUser
from tests.integration.conftest import function_env, received_event
from tests.integration.test_quotas import accepted, user, with_quota

pytestmark = pytest.mark.integration
QUOTA = 100_000  # tokens a day: room for every answer here
HEARTBEAT = 2  # seconds: the dying worker's heartbeat window (it beats every half second)
LONG = "a long answer [[fake tokens=300 tps=30]]"  # ten seconds of it


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"not within a minute: {what}"
        time.sleep(0.1)


@contextmanager
def worker_environment(
    stack: LocalTemplate,
    clients: dict[str, Any],
    aws_endpoint: str,
    fake_openai_url: str,
    task: Task,
    **env: str,
) -> Iterator[EnvironmentPool]:
    """The worker function answering ``task``'s message in an execution environment of its
    own (a child process), with the daily quota; the message is deleted afterwards."""
    event = received_event(stack, clients["sqs"], "DefaultQueue", task.task_id)
    pool = EnvironmentPool(
        handler="llmstream.worker.handler",
        function_name="quota-settlement-test",
        memory_mb=512,
        timeout_seconds=60,
        size=1,
        env={
            **os.environ,
            **function_env(stack, "WorkerFunction", aws_endpoint),
            "OPENAI_BASE_URL": fake_openai_url,
            "WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "USER_TOKENS_PER_DAY": str(QUOTA),
            "USER_RPM": "0",
            "POWERTOOLS_TRACE_DISABLED": "true",
            **env,
        },
    )

    def invoke() -> None:
        with suppress(EnvironmentDied):  # the test kills it
            pool(event, None)

    worker = threading.Thread(target=invoke)
    worker.start()
    try:
        yield pool
    finally:
        for pid in pool.pids():  # the test failed before it killed the environment
            os.kill(pid, signal.SIGKILL)
        worker.join(30)  # the invocation sees its environment die, then the pool closes
        pool.close()
        clients["sqs"].delete_message(
            QueueUrl=stack.queue_url("DefaultQueue"),
            ReceiptHandle=event["Records"][0]["receiptHandle"],
        )


def kill(pool: EnvironmentPool) -> None:
    [pid] = pool.pids()
    os.kill(pid, signal.SIGKILL)


def prompt_estimate(task: Task) -> int:
    """What an attempt counts for its prompt before the model reports usage (spending.py)."""
    max_tokens = task.max_tokens or 1024
    return estimate_tokens(build_messages(task), max_tokens) - min(max_tokens, 1024)


def answered_text(deps: Deps, task_id: str) -> str:
    """The text of the attempt that ended the answer: the chunks after the last reset."""
    text: list[str] = []
    for event in deps.log.read_all(task_id):
        if event.kind == "reset":
            text.clear()
        elif event.kind == "chunk":
            text.append(str(event.data.get("chunk", "")))
    return "".join(text)


def test_a_reservation_consumed_in_part_is_given_back_whole_not_taken_for_settled(
    deps: Deps,
) -> None:
    with_quota(deps, QUOTA)
    alice = user("alice")
    task = accepted(deps, alice, max_tokens=200)
    stale = dataclasses.replace(task)  # as a delete reads it, from the session's index
    running = deps.tasks.get(task.task_id)  # as the worker's claim returns it
    # GIVEN an answer that has used 30 of its reservation so far
    assert reservations.consume(deps, running, 30) == 30
    assert deps.tasks.get(task.task_id).reserved == task.reserved - 30
    assert deps.quotas.used_today(alice.sub) == task.reserved  # counted once: reserved
    # WHEN its conversation is deleted, with the reservation read before that
    assert reservations.release(deps, stale) is True
    # THEN what is left is given back: the day counts the 30 used, and nothing is held
    assert deps.quotas.used_today(alice.sub) == 30
    assert deps.tasks.get(task.task_id).reserved is None
    # AND the answer, finding nothing left to take, is told to charge the day itself
    assert reservations.consume(deps, running, 10) == 0
    assert reservations.release(deps, stale) is False


@pytest.fixture
def worker(
    stack: LocalTemplate, clients: dict[str, Any], aws_endpoint: str, fake_openai_url: str
) -> Callable[..., Any]:
    """worker_environment on this module's stack: ``worker(task, **env)``."""
    return functools.partial(worker_environment, stack, clients, aws_endpoint, fake_openai_url)


@pytest.fixture
def long_answer(deps: Deps) -> Task:
    """Alice's long answer, accepted under a daily quota (its tokens reserved)."""
    with_quota(deps, QUOTA)
    return accepted(deps, user("alice"), LONG, max_tokens=1000)


def test_a_worker_killed_mid_answer_has_charged_what_it_used_as_it_went(
    worker: Callable[..., Any], long_answer: Task, deps: Deps
) -> None:
    task = long_answer
    assert task.reserved and deps.quotas.used_today(task.owner) == task.reserved
    reserved = task.reserved
    with worker(task) as pool:
        # GIVEN its first attempt running, past a heartbeat: what it has used so far has
        # come out of the reservation, and the day holds the reservation alone (nothing
        # counted twice while it runs)
        wait_for(lambda: (deps.tasks.get(task.task_id).reserved or 0) < reserved, "a checkpoint")
        assert deps.quotas.used_today(task.owner) == reserved
        # WHEN its execution environment is killed mid-answer
        kill(pool)
    row = deps.tasks.get(task.task_id)
    assert row.status == "running" and row.reserved  # nothing ended it
    used_by_first = reserved - row.reserved
    # AND its message comes back to a second attempt, which answers
    run_task(deps, task.task_id, receive_count=2)
    row = deps.tasks.get(task.task_id)
    assert row.status == "done" and row.attempt == 2 and row.reserved is None
    [done] = [e for e in deps.log.read_all(task.task_id) if e.kind == "done"]
    # THEN the day counts the answer's usage and what the killed attempt accounted for as
    # it went: its prompt at least, never more than the whole answer would have cost it
    assert deps.quotas.used_today(task.owner) == done.data["usage"]["total_tokens"] + used_by_first
    whole = prompt_estimate(task) + len(answered_text(deps, task.task_id)) // 4
    assert prompt_estimate(task) <= used_by_first <= whole


def test_the_last_delivery_holds_no_reservation_for_the_dead_letter_queue_to_keep(
    worker: Callable[..., Any], long_answer: Task, deps: Deps
) -> None:
    task = long_answer
    assert task.reserved
    # GIVEN the last delivery SQS makes of its message (maxReceiveCount 1 here)
    env = {"MAX_RECEIVE_COUNT": "1"}
    with worker(task, **env) as pool:
        # WHILE it runs, the reservation is given back and the attempt charges as it goes
        wait_for(
            lambda: (
                deps.tasks.get(task.task_id).reserved is None
                and deps.quotas.used_today(task.owner) > 0
            ),
            "the reservation given back, a charge",
        )
        # WHEN it is killed too (its message then goes to the dead-letter queue)
        kill(pool)
    # THEN the task waits for a redrive, and its owner's day holds what the attempt charged,
    # not the reservation
    row = deps.tasks.get(task.task_id)
    assert row.status == "running" and row.reserved is None
    charged = deps.quotas.used_today(task.owner)
    assert prompt_estimate(task) <= charged < task.reserved
    # AND a redriven message's attempt answers, and charges what it used
    run_task(deps, task.task_id, receive_count=1)
    [done] = [e for e in deps.log.read_all(task.task_id) if e.kind == "done"]
    assert deps.tasks.get(task.task_id).status == "done"
    assert deps.quotas.used_today(task.owner) == charged + done.data["usage"]["total_tokens"]


@pytest.fixture
def stream_module(
    stack: LocalTemplate,
    aws_endpoint: str,
    fake_openai_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """The stream function's app as its environment builds it, direct mode on, a quota."""
    env = {
        **function_env(stack, "StreamFunction", aws_endpoint),
        "DIRECT_MODE_ENABLED": "true",
        "USER_TOKENS_PER_DAY": str(QUOTA),
        "USER_RPM": "0",
        "OPENAI_BASE_URL": fake_openai_url,
        "OPENAI_API_KEY": "sk-test",
    }
    env.pop("OPENAI_API_KEY_SECRET_ARN", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("OPENAI_API_KEY_SECRET_ARN", raising=False)
    from llmstream import auth, deps, settings

    caches = (settings.get_settings, deps.get_deps, auth.get_authenticator)
    for cached in caches:
        cached.cache_clear()
    import llmstream.stream

    module = importlib.reload(llmstream.stream)
    module._async_model.cache_clear()
    yield module
    module._async_model.cache_clear()
    for cached in caches:
        cached.cache_clear()


def test_a_direct_answer_whose_text_never_starts_gives_its_reservation_back(
    stream_module: Any, alice: LocalUser
) -> None:
    from llmstream.deps import get_deps

    quotas = get_deps().quotas
    assert quotas.tokens_per_day == QUOTA  # admission reserves
    sub = jwt.decode(alice.access_token, options={"verify_signature": False})["sub"]
    before = quotas.used_today(sub)
    # GIVEN a direct-mode request, admitted (its tokens reserved), whose client is gone
    # before the response's text starts
    sent: list[dict[str, Any]] = []
    incoming = [
        {"type": "http.request", "body": json.dumps({"message": "hi"}).encode()},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if len(incoming) > 1 else incoming[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start":
            await anyio.sleep_forever()  # the connection is gone: its headers never leave

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/direct",
        "raw_path": b"/direct",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"stream.test"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {alice.access_token}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("stream.test", 80),
    }
    # WHEN the app has answered it
    anyio.run(stream_module.app, scope, receive, send)
    # THEN its text never started, and the reservation is given back: the day is as it was
    assert [m["type"] for m in sent] == ["http.response.start"] and sent[0]["status"] == 200
    assert quotas.used_today(sub) == before
