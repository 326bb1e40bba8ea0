"""The poller's Lambda-shaped event and its reading of batchItemFailures."""

from __future__ import annotations

from typing import Any

import pytest

from localcloud.poller import EventSourceMapping, LambdaContext, sqs_record

pytestmark = pytest.mark.unit

MSG = {
    "MessageId": "m1",
    "ReceiptHandle": "rh",
    "Body": "{}",
    "MD5OfBody": "x",
    "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1", "Other": "no"},
    "MessageAttributes": {"k": {"StringValue": "v", "DataType": "String"}},
}


def test_record_has_the_shape_lambda_sends() -> None:
    rec = sqs_record(MSG, "arn:aws:sqs:us-east-1:1:q", "us-east-1")
    assert rec["eventSource"] == "aws:sqs"
    assert rec["attributes"] == {"ApproximateReceiveCount": "2", "SentTimestamp": "1"}
    assert rec["messageAttributes"]["k"]["stringValue"] == "v"
    assert rec["messageAttributes"]["k"]["dataType"] == "String"
    assert {"messageId", "receiptHandle", "body", "md5OfBody", "eventSourceARN", "awsRegion"} <= (
        rec.keys()
    )


def mapping(report: bool) -> EventSourceMapping:
    return EventSourceMapping(
        sqs=None,
        queue_url="u",
        queue_arn="a",
        handler=lambda e, c: None,
        function_name="f",
        timeout_seconds=3,
        report_batch_item_failures=report,
    )


@pytest.mark.parametrize(
    ("report", "result", "failed"),
    [
        (True, {"batchItemFailures": [{"itemIdentifier": "m1"}]}, {"m1"}),
        (True, {"batchItemFailures": []}, set()),
        (True, {"batchItemFailures": [{"itemIdentifier": "nope"}]}, {"m1", "m2"}),
        (True, None, set()),
        (False, {"batchItemFailures": [{"itemIdentifier": "m1"}]}, set()),
    ],
)
def test_failed_ids(report: bool, result: Any, failed: set[str]) -> None:
    msgs = [{"MessageId": "m1"}, {"MessageId": "m2"}]
    assert mapping(report)._failed_ids(result, msgs) == failed


def test_context_counts_down() -> None:
    ctx = LambdaContext(function_name="f", memory_limit_in_mb=128, timeout_seconds=300)
    assert 299_000 < ctx.get_remaining_time_in_millis() <= 300_000
    assert ctx.invoked_function_arn.endswith(":function:f")
