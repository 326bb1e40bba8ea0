"""A request-counting HTTP proxy in front of the AWS emulator: how many calls the functions
really make (DynamoDB operations by table, SQS operations by queue) and how many keys or
items they touch (what DynamoDB bills)."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CountingProxy:
    """Listens on ``port`` for ``upstream_port``; ``add`` puts one more listener in front of
    another upstream (DynamoDB Local beside LocalStack), counted together."""

    def __init__(self, upstream_port: int) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()  # calls by (operation, table)
        self.units: Counter[tuple[str, str]] = Counter()  # keys/items they touched
        self.latency: dict[tuple[str, str], list[float]] = {}  # the emulator's answer times
        self._lock = threading.Lock()
        self.servers: list[ThreadingHTTPServer] = []
        self.port = self.add(upstream_port, start=False)

    def add(self, upstream_port: int, start: bool = True) -> int:
        """One more listener, forwarding to ``upstream_port``; returns its port."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus
            # the client's delayed ACK would hold every answer back by ~40 ms.
            disable_nagle_algorithm = True
            _conn: http.client.HTTPConnection | None = None

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                target = self.headers.get("x-amz-target", "")
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                began = time.perf_counter()
                try:
                    resp, data = self._upstream(body, headers)
                except OSError:  # the emulator is gone (the stack is stopping)
                    self.send_error(502)
                    return
                proxy._count(target, body, data, time.perf_counter() - began)
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The function gave up waiting (botocore's read timeout on a saturated
                    # machine) and retries on a new connection: counted, nothing to send.
                    self.close_connection = True

            def _upstream(
                self, body: bytes, headers: dict[str, str]
            ) -> tuple[http.client.HTTPResponse, bytes]:
                # One kept-alive upstream connection per client connection (boto3 keeps its
                # connections alive too): the proxy adds a hop, not a TCP handshake per call.
                for attempt in (1, 2):
                    if self._conn is None:
                        self._conn = http.client.HTTPConnection(
                            "127.0.0.1", upstream_port, timeout=60
                        )
                    conn = self._conn
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        return resp, resp.read()
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        self._conn = None
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.servers.append(server)
        if start:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return int(server.server_address[1])

    def _count(self, target: str, body: bytes, answer: bytes, seconds: float) -> None:
        service, _, operation = target.partition(".")
        if not operation:
            return
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = {}
        counted: list[tuple[str, str, int]] = []  # (operation, table or queue, units)
        if service.startswith("DynamoDB_"):
            if "TableName" in doc:
                counted.append((operation, doc["TableName"], 1))
            for table, request in (doc.get("RequestItems") or {}).items():
                # BatchGetItem is billed per key read, BatchWriteItem per item written.
                units = len(request.get("Keys", [])) if isinstance(request, dict) else len(request)
                counted.append((operation, table, units))
        elif service == "AmazonSQS":
            queue = str(doc.get("QueueUrl", "?")).rsplit("/", 1)[-1]
            if operation == "ReceiveMessage" and b'"Messages"' not in answer:
                operation = "ReceiveMessage(empty)"
            counted.append((operation, queue, 1))
        with self._lock:
            for operation, name, units in counted:
                self.counts[(operation, name)] += 1
                self.units[(operation, name)] += units
                self.latency.setdefault((operation, name), []).append(seconds)

    def __enter__(self) -> CountingProxy:
        threading.Thread(target=self.servers[0].serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.shutdown()

    def latency_ms(self, since: dict[tuple[str, str], int] | None = None) -> dict[str, float]:
        """Median time the emulator took per (operation, table), over calls after ``since``
        (counts from an earlier ``snapshot``)."""
        with self._lock:
            out = {}
            for key, times in self.latency.items():
                recent = times[(since or {}).get(key, 0) :]
                if recent:
                    out[f"{key[0]} {key[1]}"] = round(statistics.median(recent) * 1000, 2)
            return out

    def snapshot(self) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
        """(calls, units) so far."""
        with self._lock:
            return Counter(self.counts), Counter(self.units)
