"""The dead-letter queue: what is in it, and moving messages back (`./run.sh dlq`).

Two kinds of message land there: poison messages the worker moved at once (they carry
the ``llmstream_source_queue`` and ``llmstream_reason`` attributes), and messages SQS's
redrive policy moved after maxReceiveCount failed deliveries (SQS names their queue in
``DeadLetterQueueSourceArn``). Redrive sends each back to the queue it came from with a
receive-and-send loop: it works on every endpoint (SQS's own message move task only knows
the second kind, and not every emulator has it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

SOURCE_ATTRIBUTE = "llmstream_source_queue"  # as llmstream.worker.SOURCE_QUEUE_ATTRIBUTE
REASON_ATTRIBUTE = "llmstream_reason"


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    receipt_handle: str
    body: str
    sent_at: float
    receive_count: int
    source_queue: str | None  # a URL or an ARN
    reason: str | None

    @property
    def task_id(self) -> str | None:
        try:
            value = json.loads(self.body).get("task_id")
        except (ValueError, AttributeError):
            return None
        return str(value) if value else None


def peek(sqs: Any, dlq_url: str, limit: int = 1000, *, release: bool = True) -> list[DeadLetter]:
    """The DLQ's messages. Each is received once (hidden meanwhile, so none is counted
    twice) and, with ``release``, made visible again at the end: listing moves nothing."""
    seen: dict[str, DeadLetter] = {}
    empty = 0
    while len(seen) < limit and empty < 2:
        got = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=30,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        fresh = [m for m in got if m["MessageId"] not in seen]
        empty = 0 if fresh else empty + 1
        for m in fresh:
            seen[m["MessageId"]] = _letter(m)
    letters = list(seen.values())
    if release:
        for start in range(0, len(letters), 10):
            sqs.change_message_visibility_batch(
                QueueUrl=dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": letter.receipt_handle, "VisibilityTimeout": 0}
                    for i, letter in enumerate(letters[start : start + 10])
                ],
            )
    return letters


def redrive(sqs: Any, dlq_url: str, queue_urls: dict[str, str], default_url: str) -> int:
    """Send every message back to the queue it came from; return how many moved."""
    moved = 0
    for letter in peek(sqs, dlq_url, release=False):
        target = _target(letter.source_queue, queue_urls) or default_url
        sqs.send_message(QueueUrl=target, MessageBody=letter.body)
        sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=letter.receipt_handle)
        moved += 1
    return moved


def _target(source: str | None, queue_urls: dict[str, str]) -> str | None:
    """A source named by URL or by ARN, as one of our queues' URLs."""
    if not source:
        return None
    name = source.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    for url in queue_urls.values():
        if url.rstrip("/").rsplit("/", 1)[-1] == name:
            return url
    return None


def _letter(message: dict[str, Any]) -> DeadLetter:
    attrs = message.get("Attributes", {})
    custom = message.get("MessageAttributes", {})
    return DeadLetter(
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        body=message["Body"],
        sent_at=int(attrs.get("SentTimestamp", time.time() * 1000)) / 1000,
        receive_count=int(attrs.get("ApproximateReceiveCount", 0)),
        source_queue=(custom.get(SOURCE_ATTRIBUTE, {}).get("StringValue"))
        or attrs.get("DeadLetterQueueSourceArn"),
        reason=custom.get(REASON_ATTRIBUTE, {}).get("StringValue"),
    )
