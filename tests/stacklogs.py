"""A local stack's logs as an operator reads them: the functions' JSON log lines and their
CloudWatch embedded metric format records (functions/llmstream/observe.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from localcloud.up import Stack


def log_lines(stack: Stack, component: str) -> list[dict[str, Any]]:
    """The JSON lines of a component's log (the poller's plain lines are skipped)."""
    out = []
    for line in (stack.opts.dir / "logs" / f"{component}.log").read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def metric_records(stack: Stack, component: str) -> list[dict[str, Any]]:
    """EMF records: the lines whose _aws key declares their metrics and dimensions."""
    return [line for line in log_lines(stack, component) if "_aws" in line]


def wait_records(
    stack: Stack,
    component: str,
    metric: str,
    n: int,
    timeout: float = 10,
    of: set[str] | None = None,
    since: float | None = None,
) -> list[dict[str, Any]]:
    """The component's records holding ``metric`` (of those messages or tasks: ``of``
    names message or task ids), once there are ``n``: a record is flushed when its request
    or SQS record ends, a moment after what the test saw. A stack's state folder outlives
    a test session, so its logs may hold earlier sessions' records: say ``of``, or
    ``since`` (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r
            for r in metric_records(stack, component)
            if metric in r
            and (of is None or {r.get("message_id"), r.get("task_id")} & of)
            and (since is None or r["_aws"]["Timestamp"] / 1000 >= since)
        ]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
