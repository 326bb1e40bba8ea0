"""Small servers the local stack runs beside the functions: the event-source poller process
and the static frontend server (with the ``config.json`` that deploy writes in the cloud)."""

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
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from localcloud.poller import EventSourceMapping
from localcloud.runtime import EnvironmentPool

log = logging.getLogger(__name__)


def run_poller(spec_path: Path) -> None:
    """Run the event source mappings described in ``spec_path`` until SIGTERM/SIGINT, each
    invocation in an execution environment of its own (a child process, see runtime.py)."""
    specs: list[dict[str, Any]] = json.loads(spec_path.read_text())
    # Short timeouts and few retries: with its endpoint gone, a poller must still stop
    # within seconds (long polls are ``wait_seconds``; a read waits a little longer).
    sqs = boto3.client(
        "sqs",
        config=Config(
            connect_timeout=2, read_timeout=10, retries={"mode": "standard", "max_attempts": 2}
        ),
    )
    pools: dict[str, EnvironmentPool] = {}
    for spec in specs:
        pool = pools.get(spec["function_name"])
        if pool is None:
            pool = pools[spec["function_name"]] = EnvironmentPool(
                handler=spec["handler"],
                function_name=spec["function_name"],
                memory_mb=spec["memory"],
                timeout_seconds=spec["timeout"],
                size=0,
                state_file=spec_path.with_suffix(".envs.json"),
            )
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


def frontend_app(directory: Path, config: dict[str, Any]) -> Starlette:
    async def config_json(request: Any) -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    return Starlette(
        routes=[
            Route("/config.json", config_json),
            Mount("/", StaticFiles(directory=directory, html=True)),
        ]
    )
