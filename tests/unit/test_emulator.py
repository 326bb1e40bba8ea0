"""The local AWS endpoint lets one DynamoDB request at a time into moto; others overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from localcloud.emulator import OneDynamoDBRequestAtATime


class Recorder:
    """A WSGI app that notes how many requests are inside it at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.closed = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        start_response("200 OK", [("Content-Type", "application/json")])
        return self._body()

    def _body(self) -> Iterable[bytes]:
        # The work happens while the body is produced, as a streamed response would.
        try:
            time.sleep(0.05)
            yield b"{"
            yield b"}"
        finally:
            with self._lock:
                self.inside -= 1
                self.closed += 1


def call(app: Any, target: str | None) -> bytes:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/"}
    if target:
        environ["HTTP_X_AMZ_TARGET"] = target
    return b"".join(app(environ, lambda *_: None))


def test_dynamodb_requests_never_overlap() -> None:
    inner = Recorder()
    app = OneDynamoDBRequestAtATime(inner)
    with ThreadPoolExecutor(6) as pool:
        bodies = list(pool.map(lambda _: call(app, "DynamoDB_20120810.PutItem"), range(12)))
    assert bodies == [b"{}"] * 12
    assert inner.most == 1
    assert inner.closed == 12  # each body finished inside the lock


def test_other_services_stay_concurrent() -> None:
    inner = Recorder()
    app = OneDynamoDBRequestAtATime(inner)
    targets = ["AmazonSQS.ReceiveMessage", None]  # SQS JSON protocol, and query/REST calls
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: call(app, targets[i % 2]), range(12)))
    assert inner.most > 1
