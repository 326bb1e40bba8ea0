"""An SQS event source that behaves like Lambda's event source mapping.

Like Lambda: a few pollers long-poll the queue and hand each batch (up to ``BatchSize``
records, in the event shape Lambda sends) to an invocation; at most ``MaximumConcurrency``
invocations run at once, and a poller only receives while one is free. Successful
records deleted, and with ``ReportBatchItemFailures`` only the records the function names
kept. A record that is not deleted becomes visible again after the queue's visibility
timeout and is redelivered; the queue's redrive policy moves it to the DLQ after
maxReceiveCount receives. A handler that raises fails the whole batch, as on Lambda.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    timeout_seconds: int
    region: str = "us-east-1"
    # The stack's account (from its endpoint's STS), which `up` gives its functions.
    account: str = field(
        default_factory=lambda: os.environ.get("LOCALCLOUD_ACCOUNT_ID", "123456789012")
    )
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.invoked_function_arn = (
            f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"
        )
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(path: str) -> Handler:
    module, _, attr = path.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module), attr)
    return handler


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message in the shape Lambda hands to the function."""
    attributes = {
        k: v
        for k, v in message.get("Attributes", {}).items()
        if k
        in (
            "ApproximateReceiveCount",
            "SentTimestamp",
            "SenderId",
            "ApproximateFirstReceiveTimestamp",
            "MessageGroupId",
            "MessageDeduplicationId",
            "SequenceNumber",
            "AWSTraceHeader",
        )
    }
    message_attributes = {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value["DataType"],
        }
        for name, value in message.get("MessageAttributes", {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class EventSourceMapping:
    sqs: Any
    queue_url: str
    queue_arn: str
    handler: Handler
    function_name: str
    timeout_seconds: int
    memory_mb: int = 512
    batch_size: int = 10
    batching_window: int = 0
    report_batch_item_failures: bool = False
    concurrency: int = 4
    # Long-poll time: short, so a stopping poller is gone within it (Lambda uses 20 s).
    wait_seconds: int = 2
    region: str = "us-east-1"
    # Long polls per queue. Idle long polls cost the emulator CPU (measured: 15 cost it a
    # third more CPU per answer than 6), and receiving is far faster than answering, so two
    # are enough to pick up a burst of single-record batches (Lambda starts with five).
    pollers: int = 2
    invocations: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _slots: threading.BoundedSemaphore | None = field(default=None, repr=False)

    def start(self) -> None:
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._pool = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix=f"lambda-{self.function_name}"
        )
        for i in range(max(1, min(self.pollers, self.concurrency))):
            thread = threading.Thread(
                target=self._loop, name=f"esm-{self.function_name}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Stop receiving; invocations in progress finish (like a scaled-down mapping)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=timeout is None or timeout > 0)

    def _loop(self) -> None:
        assert self._slots is not None and self._pool is not None
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.5):  # every invocation busy: do not receive
                continue
            try:
                messages = self._receive()
            except Exception:
                self._slots.release()
                log.exception("event source %s: poll failed", self.function_name)
                self._stop.wait(1.0)
                continue
            if not messages:
                self._slots.release()
                continue
            self._pool.submit(self._invoke_then_free, messages)

    def _invoke_then_free(self, messages: list[dict[str, Any]]) -> None:
        assert self._slots is not None
        try:
            self._invoke(messages)
        except Exception:
            log.exception("event source %s: invocation failed", self.function_name)
        finally:
            self._slots.release()

    def poll_once(self) -> int:
        """Receive one batch and invoke the function with it; return the batch size."""
        messages = self._receive()
        if not messages:
            return 0
        return self._invoke(messages)

    def _invoke(self, messages: list[dict[str, Any]]) -> int:
        with self._lock:
            self.invocations += 1
        event = {"Records": [sqs_record(m, self.queue_arn, self.region) for m in messages]}
        context = LambdaContext(
            function_name=self.function_name,
            memory_limit_in_mb=self.memory_mb,
            timeout_seconds=self.timeout_seconds,
            region=self.region,
        )
        try:
            result = self.handler(event, context)
        except Exception:
            log.exception("function %s raised: whole batch left for redelivery", self.function_name)
            return len(messages)
        failed = self._failed_ids(result, messages)
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        if failed:
            log.warning("function %s reported %d failed record(s)", self.function_name, len(failed))
        return len(messages)

    def _receive(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.batching_window
        while len(messages) < self.batch_size and not self._stop.is_set():
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=0 if messages else self.wait_seconds,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            got = answer.get("Messages", [])
            messages.extend(got)
            # Like Lambda: a batching window gathers more records until it closes;
            # without one, the first non-empty receive is the batch.
            if not messages or not got or time.monotonic() >= deadline:
                break
        return messages

    def _failed_ids(self, result: Any, messages: list[dict[str, Any]]) -> set[str]:
        if not self.report_batch_item_failures or not isinstance(result, dict):
            return set()
        ids = {m["MessageId"] for m in messages}
        failed = {f.get("itemIdentifier") for f in result.get("batchItemFailures") or []}
        if not failed <= ids:
            # Lambda treats an unknown or empty identifier as a failure of the whole batch.
            return ids
        return {f for f in failed if f}
