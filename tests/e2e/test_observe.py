"""What an operator sees, on the whole local stack: the metrics (CloudWatch embedded metric
format lines in each function's log), one trace id across the api's, the worker's and the
stream's log lines of an answer, and no prompt or answer text in any log."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcloud.up import Stack
from tests.e2e.conftest import auth
from tests.e2e.test_cancel_and_retry import cancel, status, wait_for
from tests.e2e.test_chat_flow import post_chat, read_stream
from tests.stacklogs import log_lines, metric_records

pytestmark = pytest.mark.e2e

FINAL = ("done", "error", "cancelled")


def declared(record: dict[str, Any]) -> tuple[set[str], list[str]]:
    """The metric names a record declares and its finest dimension set (the other is the
    rollup per function that the dashboard reads)."""
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    finest, rollup = directive["Dimensions"]
    assert directive["Namespace"] == "llmstream"
    assert set(rollup) == {"function", "service"}
    return {m["Name"] for m in directive["Metrics"]}, finest


def values(record: dict[str, Any], name: str) -> list[float]:
    value = record[name]
    return value if isinstance(value, list) else [value]


def of_task(records: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return sorted(
        (r for r in records if r.get("task_id") == task_id), key=lambda r: r.get("attempt", 0)
    )


def test_each_outcome_is_counted_with_its_figures_and_dimensions(local_stack: Stack) -> None:
    stack = local_stack
    # GIVEN four requests that end four ways: done, error (a 400 from the model),
    # cancelled, and retried twice (503 each time) before an error on the last delivery
    asks = {
        "done": "observe me [[fake tokens=30]]",
        "error": "refuse me [[fake status=400]]",
        "cancelled": "stop me [[fake tokens=400 tps=20]]",
        "retried": "retry me [[fake status=503]]",
    }
    tasks = {k: post_chat(stack, {"message": m}).json() for k, m in asks.items()}
    wait_for(lambda: status(stack, tasks["cancelled"]["task_id"])["status"] == "running", 20)
    assert cancel(stack, tasks["cancelled"]["task_id"]).status_code == 200
    for t in tasks.values():
        wait_for(lambda t=t: status(stack, t["task_id"])["status"] in FINAL, 60)
    # AND a viewer of the done answer, then one that resumes it after its first event
    read_stream(tasks["done"]["stream_url"])
    read_stream(tasks["done"]["stream_url"], headers={"Last-Event-ID": "1"})
    model = status(stack, tasks["done"]["task_id"])["model"]

    # WHEN the worker's log is read for its metric records
    wait_for(
        lambda: len(of_task(metric_records(stack, "worker"), tasks["retried"]["task_id"])) == 3
    )
    worker = metric_records(stack, "worker")

    # THEN each attempt has one record with its outcome, its figures and low dimensions
    def only(kind: str) -> list[dict[str, Any]]:
        return of_task(worker, tasks[kind]["task_id"])

    (done,) = only("done")
    names, dims = declared(done)
    assert set(dims) >= {"function", "priority", "backend", "model"}
    assert "user" not in dims and "task_id" not in dims
    assert (done["function"], done["priority"], done["backend"], done["model"]) == (
        "worker",
        "default",
        "dynamodb",
        model,
    )
    assert values(done, "AnswersDone") == [1.0]
    assert not names & {"AnswersError", "AnswersCancelled", "AnswersRetried"}
    assert values(done, "QueueTime")[0] >= 0
    assert values(done, "ModelTimeToFirstToken")[0] >= 40  # the fake's 50 ms before a token
    assert values(done, "PipelineTimeToFirstToken")[0] >= 0
    assert values(done, "TokensPerSecond")[0] > 0
    assert values(done, "AnswerDuration")[0] > 0
    # one write latency per chunk-log write: at least the first chunk and the done event
    assert len(values(done, "ChunkLogWriteLatency")) >= 2
    assert done["trace_id"] == tasks_trace(stack, tasks["done"]["task_id"])

    (error,) = only("error")
    assert values(error, "AnswersError") == [1.0] and "AnswersDone" not in error
    (cancelled,) = only("cancelled")
    assert values(cancelled, "AnswersCancelled") == [1.0]
    retried = only("retried")
    assert [r["attempt"] for r in retried] == [1, 2, 3]
    assert [("AnswersRetried" in r, "AnswersError" in r) for r in retried] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert all("AnswerDuration" not in r for r in retried[:2])  # not ended yet

    # AND the api counted each accepted request, with its priority and model
    api = metric_records(stack, "api")
    for t in tasks.values():
        (accepted,) = of_task(api, t["task_id"])
        assert values(accepted, "ChatAccepted") == [1.0]
        assert (accepted["function"], accepted["priority"]) == ("api", "default")

    # AND the stream function counted both viewers of the done answer, one a resume
    streams = of_task(metric_records(stack, "stream"), tasks["done"]["task_id"])
    assert len(streams) == 2
    assert all(values(s, "StreamsOpened") == [1.0] and s["backend"] == "dynamodb" for s in streams)
    assert sum("StreamResumes" in s for s in streams) == 1
    assert all(values(s, "StreamDuration")[0] >= 0 for s in streams)


def tasks_trace(stack: Stack, task_id: str) -> str:
    """The trace id the api recorded for the task (from its ChatAccepted record)."""
    (accepted,) = of_task(metric_records(stack, "api"), task_id)
    trace: str = accepted["trace_id"]
    return trace


def test_one_trace_id_links_the_api_worker_and_stream_lines_of_an_answer(
    local_stack: Stack,
) -> None:
    # GIVEN an answer read to its end, as a caller sent it with an X-Ray trace header
    root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    body = httpx.post(
        f"{local_stack.urls['api']}/chat",
        json={"message": "trace me [[fake tokens=20]]"},
        headers={**auth(local_stack), "X-Amzn-Trace-Id": f"Root={root};Sampled=1"},
        timeout=10,
    ).json()
    read_stream(body["stream_url"])
    task_id = body["task_id"]
    # WHEN each function's log lines about that task are read
    lines = {
        c: [x for x in log_lines(local_stack, c) if x.get("task_id") == task_id and "_aws" not in x]
        for c in ("api", "worker", "stream")
    }
    # THEN each function logged the answer, and every line of it carries the caller's trace
    for component, found in lines.items():
        assert found, f"no {component} log line names the task"
        assert {x.get("trace_id") for x in found} == {root}, (component, found)
        assert {x.get("function") for x in found} == {component}
    assert {x.get("user") for x in lines["api"] + lines["stream"]} == {
        local_stack_user_sub(local_stack)
    }


def local_stack_user_sub(stack: Stack) -> str:
    """The signed-in test user's sub (the token's subject), which the api logs as "user"."""
    payload = auth(stack)["Authorization"].split()[1].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    sub: str = claims["sub"]
    return sub


def test_no_log_holds_the_prompt_or_the_answer(local_stack: Stack) -> None:
    # GIVEN answers whose prompt (and so, from the fake model, whose answer) carry a marker,
    # ending done, in error, and retried
    marker = f"zq{uuid.uuid4().hex[:12]}"
    messages = [f"{marker} done", f"{marker} fails [[fake status=400]]", f"{marker} again"]
    with ThreadPoolExecutor(3) as pool:
        bodies = list(pool.map(lambda m: post_chat(local_stack, {"message": m}).json(), messages))
    for b in bodies:
        wait_for(lambda b=b: status(local_stack, b["task_id"])["status"] in FINAL, 60)
        read_stream(b["stream_url"])
    assert marker in status(local_stack, bodies[0]["task_id"])["text"]  # the answer has it
    # THEN no line of any log holds it
    for log in Path(local_stack.opts.dir / "logs").glob("*.log"):
        assert marker not in log.read_text(errors="replace"), log.name
