"""The local AWS endpoint: moto's server, with DynamoDB's single-item atomicity.

moto's server answers each request on its own thread, and its DynamoDB backend checks a
ConditionExpression and then applies the write as separate steps on shared state. Two
conditional writes to one item can then both succeed when the machine is busy, where
DynamoDB lets exactly one through - the guarantee the task claim and the shared rate limits
are built on. This server runs moto's own WSGI app and lets one DynamoDB request at a time
into it; the other services (SQS long polls above all) stay concurrent. moto's backends
are Python under one interpreter lock, so the serialisation costs little throughput.

    python -m localcloud aws --port 5000
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class OneDynamoDBRequestAtATime:
    """WSGI middleware: DynamoDB requests (X-Amz-Target: DynamoDB_<version>.<Operation>)
    run one at a time, the response body produced inside the lock; others pass through."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self.app(environ, start_response)
        with self.lock:
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


def app() -> WSGIApp:
    return OneDynamoDBRequestAtATime(DomainDispatcherApplication(create_backend_app))


def serve(host: str, port: int) -> None:
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server does: some URLs carry it
    run_simple(host, port, app(), threaded=True, request_handler=MotoRequestHandler)
