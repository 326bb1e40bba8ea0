"""The ways an answer can end without the usual settlement still leave its owner's day
right: a worker killed mid-answer (a real child process, as Lambda runs one), and the last
delivery before the dead-letter queue. On the emulator, with the fake model
(docs/quotas.md)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from llmstream.answer import run_task
from llmstream.deps import Deps
from llmstream.limits import estimate_tokens
from llmstream.llm import build_messages
from llmstream.tasks import Task
from localcloud.runtime import EnvironmentDied, EnvironmentPool
from localcloud.template import LocalTemplate
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


def test_a_worker_killed_mid_answer_has_charged_what_it_used_as_it_went(
    stack: LocalTemplate,
    clients: dict[str, Any],
    aws_endpoint: str,
    fake_openai_url: str,
    deps: Deps,
) -> None:
    with_quota(deps, QUOTA)
    alice = user("alice")
    task = accepted(deps, alice, LONG, max_tokens=1000)
    assert task.reserved and deps.quotas.used_today(alice.sub) == task.reserved
    with worker_environment(stack, clients, aws_endpoint, fake_openai_url, task) as pool:
        # GIVEN its first attempt running, past a heartbeat: it has charged its day
        wait_for(lambda: deps.quotas.used_today(alice.sub) > task.reserved, "a charge")
        # WHEN its execution environment is killed mid-answer
        kill(pool)
    assert deps.tasks.get(task.task_id).status == "running"  # nothing ended it
    charged = deps.quotas.used_today(alice.sub) - task.reserved
    # AND its message comes back to a second attempt, which answers
    run_task(deps, task.task_id, receive_count=2)
    row = deps.tasks.get(task.task_id)
    assert row.status == "done" and row.attempt == 2 and row.reserved is None
    [done] = [e for e in deps.log.read_all(task.task_id) if e.kind == "done"]
    # THEN the day counts the answer's usage and what the killed attempt charged as it
    # went: its prompt at least, never more than the whole answer would have cost it
    assert deps.quotas.used_today(alice.sub) == done.data["usage"]["total_tokens"] + charged
    whole = prompt_estimate(task) + len(answered_text(deps, task.task_id)) // 4
    assert prompt_estimate(task) <= charged <= whole


def test_the_last_delivery_holds_no_reservation_for_the_dead_letter_queue_to_keep(
    stack: LocalTemplate,
    clients: dict[str, Any],
    aws_endpoint: str,
    fake_openai_url: str,
    deps: Deps,
) -> None:
    with_quota(deps, QUOTA)
    alice = user("alice")
    task = accepted(deps, alice, LONG, max_tokens=1000)
    assert task.reserved
    # GIVEN the last delivery SQS makes of its message (maxReceiveCount 1 here)
    env = {"MAX_RECEIVE_COUNT": "1"}
    with worker_environment(stack, clients, aws_endpoint, fake_openai_url, task, **env) as pool:
        # WHILE it runs, the reservation is given back and the attempt charges as it goes
        wait_for(
            lambda: (
                deps.tasks.get(task.task_id).reserved is None
                and deps.quotas.used_today(alice.sub) > 0
            ),
            "the reservation given back, a charge",
        )
        # WHEN it is killed too (its message then goes to the dead-letter queue)
        kill(pool)
    # THEN the task waits for a redrive, and its owner's day holds what the attempt charged,
    # not the reservation
    row = deps.tasks.get(task.task_id)
    assert row.status == "running" and row.reserved is None
    charged = deps.quotas.used_today(alice.sub)
    assert prompt_estimate(task) <= charged < task.reserved
    # AND a redriven message's attempt answers, and charges what it used
    run_task(deps, task.task_id, receive_count=1)
    [done] = [e for e in deps.log.read_all(task.task_id) if e.kind == "done"]
    assert deps.tasks.get(task.task_id).status == "done"
    assert deps.quotas.used_today(alice.sub) == charged + done.data["usage"]["total_tokens"]
