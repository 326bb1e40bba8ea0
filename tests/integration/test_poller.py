"""The local SQS event source behaves like Lambda's: deletes successes, keeps reported
failures for redelivery after the visibility timeout, and the redrive policy applies."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from localcloud.poller import EventSourceMapping
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def queues(clients: dict[str, Any]) -> tuple[str, str]:
    sqs = clients["sqs"]
    dlq = sqs.create_queue(QueueName=unique("dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue = sqs.create_queue(
        QueueName=unique("q"),
        Attributes={
            "VisibilityTimeout": "1",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
        },
    )["QueueUrl"]
    yield queue, dlq
    sqs.delete_queue(QueueUrl=queue)
    sqs.delete_queue(QueueUrl=dlq)


def esm(sqs: Any, queue: str, handler: Any, report: bool = True) -> EventSourceMapping:
    return EventSourceMapping(
        sqs=sqs,
        queue_url=queue,
        queue_arn="arn:aws:sqs:us-east-1:1:q",
        handler=handler,
        function_name="fn",
        timeout_seconds=5,
        batch_size=10,
        report_batch_item_failures=report,
        wait_seconds=1,
    )


def count(sqs: Any, queue: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def test_reported_failures_are_redelivered_then_go_to_the_dlq(
    clients: dict[str, Any], queues: tuple[str, str]
) -> None:
    sqs = clients["sqs"]
    queue, dlq = queues
    for body in ("ok-1", "bad", "ok-2"):
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    seen: list[tuple[str, str]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        assert context.get_remaining_time_in_millis() > 0
        failures = []
        for record in event["Records"]:
            seen.append((record["body"], record["attributes"]["ApproximateReceiveCount"]))
            if record["body"] == "bad":
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    mapping = esm(sqs, queue, handler)
    deadline = time.monotonic() + 20
    while sum(1 for b, _ in seen if b == "bad") < 2 and time.monotonic() < deadline:
        mapping.poll_once()
    # The successes were deleted after one delivery each; "bad" came back once more.
    assert sorted(b for b, _ in seen if b.startswith("ok")) == ["ok-1", "ok-2"]
    assert [c for b, c in seen if b == "bad"] == ["1", "2"]
    # After maxReceiveCount (2) receives, the next receive moves it to the DLQ.
    time.sleep(1.2)
    mapping.poll_once()
    moved = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=2).get("Messages", [])
    assert [m["Body"] for m in moved] == ["bad"]
    assert count(sqs, queue) == 0


def test_a_handler_that_raises_fails_the_whole_batch(
    clients: dict[str, Any], queues: tuple[str, str]
) -> None:
    sqs = clients["sqs"]
    queue, _ = queues
    sqs.send_message(QueueUrl=queue, MessageBody="x")

    def handler(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("crash")

    assert esm(sqs, queue, handler).poll_once() == 1
    time.sleep(1.2)  # visibility timeout
    got = sqs.receive_message(
        QueueUrl=queue, WaitTimeSeconds=2, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in got["Messages"]] == ["2"]


def test_concurrent_pollers_deliver_each_message_once(
    clients: dict[str, Any], queues: tuple[str, str]
) -> None:
    sqs = clients["sqs"]
    queue, _ = queues
    for i in range(12):
        sqs.send_message(QueueUrl=queue, MessageBody=str(i))
    got: list[str] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        got.extend(r["body"] for r in event["Records"])
        return {"batchItemFailures": []}

    mapping = esm(sqs, queue, handler)
    mapping.concurrency = 3
    mapping.start()
    deadline = time.monotonic() + 15
    while len(got) < 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    mapping.stop(timeout=5)
    assert sorted(got, key=int) == [str(i) for i in range(12)]
    assert mapping.invocations >= 1
