"""The poller process (`python -m localcloud poll`): a function's SQS event source mappings,
each invocation in an execution environment of its own (runtime.py) or, under `--lambda
sam`, through the Lambda Invoke API of `sam local start-lambda`."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from localcloud.poller import EventSourceMapping
from localcloud.runtime import EnvironmentPool, HandlerError

log = logging.getLogger(__name__)


class InvokeApi:
    """The function behind the Lambda Invoke API (``sam local start-lambda``): what the
    event source calls instead of an environment of its own. A function error, a timeout
    or an engine failure fails the whole batch, whose messages come back, as on Lambda."""

    def __init__(
        self, endpoint: str, function: str, timeout_seconds: int, region: str = "us-east-1"
    ) -> None:
        self.function = function
        # No retries: a failed invocation is the event source's to handle (redelivery).
        self._client = boto3.client(
            "lambda",
            endpoint_url=endpoint,
            region_name=region,
            config=Config(
                connect_timeout=5,
                # The container's start, the function's whole Timeout, and SAM's cleanup.
                read_timeout=timeout_seconds + 60,
                retries={"mode": "standard", "max_attempts": 1},
            ),
        )

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        answer = self._client.invoke(FunctionName=self.function, Payload=json.dumps(event))
        payload = answer["Payload"].read()
        if not payload.strip():
            # Lambda answers a timeout with FunctionError "Sandbox.Timedout"; SAM stops the
            # container and answers 200 with nothing (a handler's None is "null"). Either
            # way the function gave no result, and the batch must come back.
            raise HandlerError(f"{self.function}: no result (timed out, or its container died)")
        result = json.loads(payload)
        if answer.get("FunctionError") or (isinstance(result, dict) and "errorType" in result):
            message = result.get("errorMessage") if isinstance(result, dict) else payload[:200]
            raise HandlerError(f"{self.function}: {message}")
        return result

    def close(self) -> None:
        self._client.close()


def run_poller(spec_path: Path) -> None:
    """Run the event source mappings described in ``spec_path`` until SIGTERM/SIGINT, each
    invocation in an execution environment of its own (a child process, see runtime.py),
    or, with an ``invoke_url`` in the spec, through that Lambda Invoke API."""
    specs: list[dict[str, Any]] = json.loads(spec_path.read_text())
    # Short timeouts and few retries: with its endpoint gone, a poller must still stop
    # within seconds (long polls are ``wait_seconds``; a read waits a little longer).
    sqs = boto3.client(
        "sqs",
        config=Config(
            connect_timeout=2, read_timeout=10, retries={"mode": "standard", "max_attempts": 2}
        ),
    )
    pools: dict[str, EnvironmentPool | InvokeApi] = {}
    for spec in specs:
        pool = pools.get(spec["function_name"])
        if spec.get("invoke_url"):
            if pool is None:
                pools[spec["function_name"]] = InvokeApi(
                    spec["invoke_url"], spec["invoke_function"], spec["timeout"], spec["region"]
                )
            continue
        if pool is None:
            pool = pools[spec["function_name"]] = EnvironmentPool(
                handler=spec["handler"],
                function_name=spec["function_name"],
                memory_mb=spec["memory"],
                timeout_seconds=spec["timeout"],
                size=0,
                state_file=spec_path.with_suffix(".envs.json"),
            )
        assert isinstance(pool, EnvironmentPool)
        pool.size += spec["concurrency"]
    (spec_path.with_suffix(".pid")).write_text(str(os.getpid()))
    mappings = []
    for spec in specs:
        mapping = EventSourceMapping(
            sqs=sqs,
            queue_url=spec["queue_url"],
            queue_arn=spec["queue_arn"],
            handler=pools[spec["function_name"]],
            function_name=spec["function_name"],
            timeout_seconds=spec["timeout"],
            memory_mb=spec["memory"],
            batch_size=spec["batch_size"],
            batching_window=spec["batching_window"],
            report_batch_item_failures=spec["report_batch_item_failures"],
            concurrency=spec["concurrency"],
            wait_seconds=spec.get("wait_seconds", 2),
            region=spec["region"],
        )
        mapping.start()
        mappings.append(mapping)
        log.info(
            "polling %s -> %s (x%d)", spec["queue_url"], spec["function_name"], spec["concurrency"]
        )
    stop = threading.Event()
    graceful = threading.Event()
    # SIGTERM (stop): at once, whatever the endpoint is doing; the environments end with
    # their answers, whose messages come back to the queue after the heartbeat window.
    # SIGINT (scale, a backend switch): stop receiving, let the answers in progress finish.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: (graceful.set(), stop.set()))
    spec_path.with_suffix(".ready").write_text("ready\n")
    stop.wait()
    for mapping in mappings:
        mapping._stop.set()
    if not graceful.is_set():
        for pool in pools.values():
            pool.close()
    for mapping in mappings:
        mapping.stop(timeout=None if graceful.is_set() else 3)
    for pool in pools.values():
        pool.close()
