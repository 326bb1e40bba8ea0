"""Dead workers: an execution environment killed mid-answer is replaced within the heartbeat
window, the stack stays up, and every answer still ends whole. Poison messages go to the DLQ
at once; `dlq redrive` brings a message back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from localcloud.up import Stack
from tests.chaos import (
    Chaos,
    environments,
    read_events,
    running_tasks,
    status_of,
    wait_final,
    whole,
)
from tests.conftest import ARTIFACTS, ROOT
from tests.e2e.conftest import auth, stack_options
from tests.stacklogs import wait_records

pytestmark = pytest.mark.e2e
HEARTBEAT = 6  # seconds: the message's visibility window while a worker runs


@pytest.fixture(scope="module")
def crash_stack() -> Iterator[Stack]:
    """A stack with a short heartbeat window, so recoveries take seconds in a test."""
    opts = stack_options(
        "e2e-crash",
        workers=4,
        extra_env={"WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT), "USER_RPM": "0"},
    )
    stack = Stack(opts)
    stack.start()
    yield stack
    stack.stop()


def poller_pid(stack: Stack) -> int:
    return stack.procs["worker"].pid


def running_environments(stack: Stack, busy_for: float) -> list[int]:
    return list(running_tasks(stack, busy_for))


def chat(stack: Stack, headers: dict[str, str], message: str) -> dict[str, Any]:
    """POST /chat as the user of ``headers``: the answer's task_id and stream_url."""
    body: dict[str, Any] = httpx.post(
        f"{stack.urls['api']}/chat", json={"message": message}, headers=headers, timeout=10
    ).json()
    return body


def whole_from_zero(stack: Stack, status: dict[str, Any]) -> tuple[bool, int]:
    """The stream read from 0 after the end: dense seqs, one terminal event, and the text
    after its last reset equal to the status's text. Returns (whole, resets)."""
    return whole(read_events(status["stream_url"]), status)


@pytest.mark.processes
def test_killing_every_worker_environment_mid_answer_keeps_the_stack_up(
    crash_stack: Stack,
) -> None:
    alice = auth(crash_stack, "alice")
    # GIVEN a long answer, running
    body = chat(crash_stack, alice, "long [[fake tokens=400 tps=50]]")
    deadline = time.monotonic() + 30
    while status_of(crash_stack, body["task_id"], alice)["last_seq"] < 5:
        assert time.monotonic() < deadline, "the answer did not start"
        time.sleep(0.2)
    # WHEN every child process of the poller is killed (SIGKILL)
    children = psutil.Process(poller_pid(crash_stack)).children()
    assert children, "the worker runs in execution environments of its own"
    killed_at = time.monotonic()
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
    # THEN the stack stays up, and the answer ends done with a new attempt
    final = wait_final(crash_stack, body["task_id"], alice)
    recovered = time.monotonic() - killed_at
    crash_stack.check()  # raises if any component died
    assert final["status"] == "done" and final["attempt"] >= 2, final
    ok, resets = whole_from_zero(crash_stack, final)
    assert ok and resets >= 1
    # AND it came back within the heartbeat window (plus a new environment's start and the
    # rest of the answer: 400 tokens at 50/s)
    assert recovered < HEARTBEAT + 8 + 30, recovered
    now = {p.pid for p in psutil.Process(poller_pid(crash_stack)).children()}
    assert not now & {c.pid for c in children}  # fresh environments took over


@pytest.mark.processes
def test_chaos_every_answer_ends_whole_while_environments_are_killed(
    crash_stack: Stack,
) -> None:
    # GIVEN 20 answers of about five seconds at once, each with a viewer on its stream
    users = [auth(crash_stack, f"chaos-{i}") for i in range(5)]
    # WHEN, every ~2 s for 20 s, one running worker environment is killed
    report = Chaos(answers=20, tokens=200, tps=40).run(crash_stack, users)
    (ARTIFACTS / "chaos.json").write_text(json.dumps(report, indent=2))
    # THEN every answer ends done, whole at its viewer, with the text after its last reset
    assert report["kills"] >= 5, report
    assert report["done"] == 20 and report["lost"] == report["hung"] == 0, report
    assert report["duplicated"] == 0, report
    assert report["retried"] >= 1, report
    # AND each killed answer's viewer saw the new attempt's reset
    assert report["recoveries_measured"]["reset"] >= 1, report
    crash_stack.check()


def sqs(stack: Stack) -> Any:
    return stack.client("sqs")


def cli(stack: Stack, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "localcloud", *args, "--state-dir", str(stack.opts.dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def dead_letters(stack: Stack) -> list[str]:
    return [line for line in cli(stack, "dlq").splitlines()[1:] if line.strip()]


def test_a_poison_message_goes_to_the_dlq_on_its_first_failure(crash_stack: Stack) -> None:
    assert crash_stack.template is not None
    queue = crash_stack.template.queue_url("DefaultQueue")
    client = sqs(crash_stack)
    # WHEN the queue gets a body that is no task message, and one naming no task
    sent = {
        client.send_message(QueueUrl=queue, MessageBody="not json at all")["MessageId"],
        client.send_message(QueueUrl=queue, MessageBody=json.dumps({"task_id": "0" * 32}))[
            "MessageId"
        ],
    }
    # THEN both are in the DLQ within seconds, each delivered once, with the reason
    deadline = time.monotonic() + 30
    while len(letters := dead_letters(crash_stack)) < 2:
        assert time.monotonic() < deadline, letters
        time.sleep(0.5)
    text = "\n".join(letters)
    assert "not a task message" in text and "has no request row" in text
    assert "-DefaultQueue" in text
    # AND the worker counted each (its metric records, as CloudWatch would read them)
    counted = wait_records(crash_stack, "worker", "AnswersDeadLettered", 2, of=sent)
    assert {r["message_id"] for r in counted} == sent and len(counted) == 2
    cli(crash_stack, "dlq", "redrive")  # they come back and go again: poison stays poison
    deadline = time.monotonic() + 30
    while len(dead_letters(crash_stack)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    client.purge_queue(QueueUrl=crash_stack.template.queue_url("DeadLetterQueue"))


def test_a_redriven_dead_letter_completes(crash_stack: Stack) -> None:
    assert crash_stack.template is not None
    client = sqs(crash_stack)
    dlq_url = crash_stack.template.queue_url("DeadLetterQueue")
    alice = auth(crash_stack, "alice")
    # GIVEN an answer whose worker died on every delivery (killed each time it ran), so the
    # queue's redrive policy moved its message to the DLQ after maxReceiveCount (3)
    body = chat(crash_stack, alice, "unlucky [[fake tokens=150 tps=30]]")
    attempts_killed: set[int] = set()
    deadline = time.monotonic() + 90
    while not dead_letters(crash_stack):
        assert time.monotonic() < deadline, status_of(crash_stack, body["task_id"], alice)
        status = status_of(crash_stack, body["task_id"], alice)
        if status["status"] == "running" and status["attempt"] not in attempts_killed:
            for pid in running_environments(crash_stack, busy_for=0.5):
                os.kill(pid, signal.SIGKILL)
                attempts_killed.add(status["attempt"])
        time.sleep(0.3)
    assert status_of(crash_stack, body["task_id"], alice)["status"] == "running"
    # WHEN an operator redrives the DLQ
    assert "moved 1 message" in cli(crash_stack, "dlq", "redrive")
    # THEN the answer completes, whole
    final = wait_final(crash_stack, body["task_id"], alice)
    assert final["status"] == "done" and final["attempt"] >= 4, final
    assert whole_from_zero(crash_stack, final)[0]
    assert (
        client.get_queue_attributes(
            QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "0"
    )


def test_the_stream_tells_its_viewer_when_the_worker_is_lost(crash_stack: Stack) -> None:
    alice = auth(crash_stack, "alice")
    body = chat(crash_stack, alice, "watch me [[fake tokens=300 tps=30]]")
    seen: list[tuple[str, str]] = []
    killed, told = threading.Event(), threading.Event()
    poller = poller_pid(crash_stack)

    def kill_when_running() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            victims = running_environments(crash_stack, busy_for=0.5)
            if victims and status_of(crash_stack, body["task_id"], alice)["last_seq"] >= 3:
                # The event source is paused while the worker is dead, so the gap before the
                # next attempt outlasts the notice's threshold whatever the machine's load.
                os.kill(poller, signal.SIGSTOP)
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                killed.set()
                told.wait(30)
                os.kill(poller, signal.SIGCONT)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    from httpx_sse import connect_sse

    try:
        with (
            httpx.Client(timeout=60) as client,
            connect_sse(client, "GET", body["stream_url"]) as source,
        ):
            for sse in source.iter_sse():
                if not sse.data:
                    continue  # a keep-alive
                seen.append((sse.event, sse.data))
                if sse.event == "status":
                    told.set()
                if json.loads(sse.data).get("type") == "done":
                    break
    finally:
        told.set()
        os.kill(poller, signal.SIGCONT)
    killer.join()
    assert killed.is_set(), environments(crash_stack)
    kinds = [
        "lost" if event == "status" else json.loads(data).get("type", "chunk")
        for event, data in seen
    ]
    # THEN the viewer was told the worker was lost, then the new attempt reset and finished
    assert "lost" in kinds and "reset" in kinds[kinds.index("lost") :], kinds
    assert kinds[-1] == "done"
    status = json.loads(next(d for e, d in seen if e == "status"))
    assert status["state"] == "worker_lost" and status["attempt"] == 1
