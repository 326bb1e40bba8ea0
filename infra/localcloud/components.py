"""Small servers the local stack runs beside the functions: the event-source poller process
and the static frontend server (with the ``config.json`` that deploy writes in the cloud)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import boto3
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from localcloud.poller import EventSourceMapping, load_handler

log = logging.getLogger(__name__)


def run_poller(spec_path: Path) -> None:
    """Run the event source mappings described in ``spec_path`` until SIGTERM/SIGINT."""
    specs: list[dict[str, Any]] = json.loads(spec_path.read_text())
    sqs = boto3.client("sqs")
    mappings = []
    for spec in specs:
        mapping = EventSourceMapping(
            sqs=sqs,
            queue_url=spec["queue_url"],
            queue_arn=spec["queue_arn"],
            handler=load_handler(spec["handler"]),
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
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    spec_path.with_suffix(".ready").write_text("ready\n")
    stop.wait()
    for mapping in mappings:
        mapping._stop.set()
    for mapping in mappings:
        mapping.stop(timeout=10)


def frontend_app(directory: Path, config: dict[str, Any]) -> Starlette:
    async def config_json(request: Any) -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    return Starlette(
        routes=[
            Route("/config.json", config_json),
            Mount("/", StaticFiles(directory=directory, html=True)),
        ]
    )
