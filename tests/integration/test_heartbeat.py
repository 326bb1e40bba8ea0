"""The worker's heartbeat on the emulator: a running worker keeps its message invisible one
short window at a time; once it dies, the message is back within that window."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest

from llmstream.deps import Deps
from localcloud.runtime import EnvironmentDied, EnvironmentPool
from localcloud.template import LocalTemplate
from tests.integration.conftest import function_env, queued_task, received_event

pytestmark = pytest.mark.integration
WINDOW = 3  # seconds


def test_a_running_workers_message_stays_hidden_and_comes_back_soon_after_it_dies(
    stack: LocalTemplate,
    clients: dict[str, Any],
    aws_endpoint: str,
    fake_openai_url: str,
    deps: Deps,
) -> None:
    sqs, queue = clients["sqs"], stack.queue_url("HighQueue")
    # GIVEN a task whose answer takes about 8 s, its message received by the event source
    task = queued_task(
        deps, message="slow [[fake tokens=400 tps=50]]", owner="sub-heartbeat", new_session=True
    )
    event = received_event(stack, sqs, "HighQueue", task.task_id)
    env = {
        **os.environ,
        **function_env(stack, "WorkerFunction", aws_endpoint),
        "OPENAI_BASE_URL": fake_openai_url,
        "WORKER_HEARTBEAT_SECONDS": str(WINDOW),
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    pool = EnvironmentPool(
        handler="llmstream.worker.handler",
        function_name="heartbeat-test",
        memory_mb=512,
        timeout_seconds=60,
        size=1,
        env=env,
    )
    outcome: list[BaseException | Any] = []

    def invoke() -> None:
        try:
            outcome.append(pool(event, None))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=invoke)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while deps.tasks.get(task.task_id).status != "running":
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)
        # WHILE it runs, for twice its window: nobody else can receive the message
        hidden_until = time.monotonic() + 2 * WINDOW
        while time.monotonic() < hidden_until:
            got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
            assert got == [], "the message came back while its worker was alive"
        assert deps.tasks.get(task.task_id).status == "running"
        # WHEN the worker's execution environment dies
        [pid] = pool.pids()
        os.kill(pid, signal.SIGKILL)
        died = time.monotonic()
        worker.join(10)
        assert isinstance(outcome[0], EnvironmentDied)
        # THEN the message is back within the window (plus a receive's round trip)
        back = []
        while not back:
            assert time.monotonic() - died < WINDOW + 2, "the message did not come back"
            back = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
        assert json.loads(back[0]["Body"]) == {"task_id": task.task_id}
        assert time.monotonic() - died <= WINDOW + 1.5
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=back[0]["ReceiptHandle"])
    finally:
        pool.close()
        worker.join(10)
