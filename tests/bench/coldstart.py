"""Cold starts: each function's time from a new process to its first answer, beside the
floor of Lambda's Python runtime (a handler that imports boto3, creates one client and
makes one call), in one run on one machine.

Each measurement is a fresh interpreter of .venv-lambda (`./run.sh` installs it: Python 3.12,
the template's runtime, with exactly the functions' locked dependencies compiled to bytecode,
as `sam build` ships them; the floor runs there too) with the function's environment from the
running stack (what Lambda's init runs: imports, settings, clients), then one real request
through the function's own entry point, as Lambda (or the Web Adapter) would send it:
  api     Mangum handler, GET /sessions as a signed-in user (a DynamoDB query)
  stream  the ASGI app as uvicorn runs it under the adapter, GET /stream/{id} of a
          finished answer (token check, chunk-log reads, the whole SSE response)
  worker  the SQS handler, a record naming a finished task (heartbeat, row read,
          acknowledged), received from a queue of its own that no poller reads
  floor   import boto3, one DynamoDB client, one GetItem
The child reports when its init ended and when the answer was complete, and its peak RSS.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.bench.clients import finished_answer

if TYPE_CHECKING:
    from localcloud.up import Stack

ROOT = Path(__file__).resolve().parents[2]
LAMBDA_PYTHON = ROOT / ".venv-lambda" / "bin" / "python"

_PRELUDE = """
import json, sys, time
def report(init_end):
    # VmHWM: this process's peak RSS since its exec (getrusage's maxrss would carry the
    # parent's from before the exec)
    with open("/proc/self/status") as status:
        rss = next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) // 1024
    print(json.dumps({"init_end": init_end, "done": time.time(), "rss_mb": rss}))
"""

_FLOOR = """
import boto3
client = boto3.client("dynamodb")
init_end = time.time()
client.get_item(TableName=ARG["table"], Key={"task_id": {"S": "none"}})
report(init_end)
"""

_API = """
from llmstream.api import handler
init_end = time.time()
event = {
    "version": "2.0", "routeKey": "ANY /{proxy+}", "rawPath": "/sessions",
    "rawQueryString": "", "headers": {"host": "api", "authorization": ARG["auth"]},
    "requestContext": {"accountId": "1", "apiId": "a", "domainName": "api",
        "http": {"method": "GET", "path": "/sessions", "protocol": "HTTP/1.1",
                 "sourceIp": "127.0.0.1", "userAgent": "bench"},
        "requestId": "r", "routeKey": "ANY /{proxy+}", "stage": "$default",
        "time": "", "timeEpoch": 0},
    "body": None, "isBase64Encoded": False,
}
class Context:
    function_name = "api"; memory_limit_in_mb = 512; aws_request_id = "r"
    invoked_function_arn = "arn:aws:lambda:us-east-1:1:function:api"
    def get_remaining_time_in_millis(self): return 30000
out = handler(event, Context())
assert out["statusCode"] == 200, out
report(init_end)
"""

_STREAM = """
import asyncio
import uvicorn  # what the Web Adapter's run.sh starts the app with
from llmstream.stream import app
init_end = time.time()
async def get(path, query):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "headers": [(b"host", b"stream")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "root_path": ""}
    finished, status, body = asyncio.Event(), [0], []
    async def receive():
        await finished.wait()
        return {"type": "http.disconnect"}
    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()
    await app(scope, receive, send)
    return status[0], b"".join(body)
status, body = asyncio.run(get(ARG["path"], ARG["query"]))
assert status == 200 and b'"type":"done"' in body.replace(b" ", b""), (status, body[-300:])
report(init_end)
"""

_WORKER = """
from llmstream.worker import handler
init_end = time.time()
record = {
    "messageId": "cold-start", "receiptHandle": ARG["receipt_handle"],
    "body": json.dumps({"task_id": ARG["task_id"]}),
    "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0",
                   "SenderId": "bench", "ApproximateFirstReceiveTimestamp": "0"},
    "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
    "eventSourceARN": ARG["queue_arn"], "awsRegion": "us-east-1",
}
class Context:
    function_name = "worker"; memory_limit_in_mb = 512; aws_request_id = "r"
    invoked_function_arn = "arn:aws:lambda:us-east-1:1:function:worker"
    def get_remaining_time_in_millis(self): return 300000
out = handler({"Records": [record]}, Context())
assert out == {"batchItemFailures": []}, out
report(init_end)
"""

SCRIPTS = {"floor": _FLOOR, "api": _API, "stream": _STREAM, "worker": _WORKER}


def once(name: str, env: dict[str, str], arg: dict[str, Any]) -> dict[str, float]:
    """One cold start of ``name``: seconds to the end of init and to the first answer."""
    code = _PRELUDE + f"ARG = {json.dumps(arg)!r}\nARG = json.loads(ARG)\n" + SCRIPTS[name]
    if not LAMBDA_PYTHON.exists():
        raise RuntimeError(f"{LAMBDA_PYTHON} is missing: ./run.sh bench (or test) installs it")
    env = {**env, "PYTHONPATH": str(ROOT / "functions"), "PYTHONDONTWRITEBYTECODE": "1"}
    began = time.time()
    run = subprocess.run(
        [str(LAMBDA_PYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if run.returncode != 0:
        raise RuntimeError(f"cold start of {name} failed:\n{run.stderr[-3000:]}")
    got = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        "init_s": got["init_end"] - began,
        "first_answer_s": got["done"] - began,
        "rss_mb": float(got["rss_mb"]),
    }


def measure(
    envs: dict[str, dict[str, str]],
    args: dict[str, Callable[[], dict[str, Any]]],
    rounds: int = 3,
) -> dict[str, Any]:
    """Medians over ``rounds`` cold starts of each, interleaved (floor, api, stream, worker,
    floor, ...) so the machine's state drifts over all of them alike. ``args`` makes each
    run's arguments (the worker needs a message of its own each time).

    Returns {"rounds": n, "by_function": {name: {init_s, first_answer_s, after_init_s,
    rss_mb, x_floor}}}. after_init_s is the first request alone: what a cold start costs
    once SnapStart has taken init's imports and clients out of it (plus Lambda's restore)."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in SCRIPTS}
    for _ in range(rounds):
        for name in SCRIPTS:
            run = once(name, envs[name], args[name]())
            run["after_init_s"] = run["first_answer_s"] - run["init_s"]
            samples[name].append(run)
    out: dict[str, dict[str, float]] = {}
    for name, runs in samples.items():
        out[name] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    floor = out["floor"]["first_answer_s"]
    for name in SCRIPTS:
        out[name]["x_floor"] = round(out[name]["first_answer_s"] / floor, 2)
    return {"rounds": rounds, "by_function": out}


def measure_all(stack: Stack, user: dict[str, str], say: Any, rounds: int) -> dict[str, Any]:
    """Each function's cold start on ``stack`` beside the boto3 floor, ``rounds`` each."""
    say(f"cold starts: api, stream, worker and the boto3 floor, {rounds} each ...")
    body = finished_answer(stack.urls["api"], user)
    url = httpx.URL(body["stream_url"])
    worker = stack.env["WorkerFunction"]
    # The worker's record comes from a queue no poller reads, standing in for its low
    # priority queue, so its heartbeat has a real receipt handle to extend.
    sqs = stack.client("sqs")
    queue = sqs.create_queue(QueueName=f"{stack.opts.stack}-coldstart")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]

    def worker_record() -> dict[str, Any]:
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"task_id": body["task_id"]}))
        got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5)["Messages"][0]
        return {
            "task_id": body["task_id"],
            "queue_arn": queue_arn,
            "receipt_handle": got["ReceiptHandle"],
        }

    envs = {
        "floor": worker,
        "api": stack.env["ApiFunction"],
        "stream": stack.env["StreamFunction"],
        "worker": {**worker, "QUEUE_URL_LOW": queue},
    }
    args = {
        "floor": lambda: {"table": worker["REQUESTS_TABLE"]},
        "api": lambda: {"auth": user["Authorization"]},
        "stream": lambda: {"path": url.path, "query": url.query.decode()},
        "worker": worker_record,
    }
    assert stack.template is not None
    fns = stack.template.functions()
    return {
        **measure(envs, args, rounds),
        "snapstart": [
            k
            for k, logical in (
                ("api", "ApiFunction"),
                ("stream", "StreamFunction"),
                ("worker", "WorkerFunction"),
            )
            if fns[logical].snapstart
        ],
    }
