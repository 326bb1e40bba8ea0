"""Worker function: SQS event source -> one answer per record (Powertools BatchProcessor)."""

from __future__ import annotations

import math
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from llmstream.answer import RetryLater, Throttled, run_task
from llmstream.deps import get_deps
from llmstream.models import TaskMessage
from llmstream.settings import Settings

logger = Logger()


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    # A body that is not a task message raises: the record is reported as failed and, after
    # maxReceiveCount deliveries, lands in the DLQ (a poison message, not an endless retry).
    message = TaskMessage.model_validate_json(record.body)
    # Thread-safe keys: the local poller runs several invocations in one process.
    logger.thread_safe_append_keys(task_id=message.task_id)
    deps = get_deps()
    try:
        run_task(
            deps,
            message.task_id,
            receive_count=int(record.attributes.approximate_receive_count),
            remaining_seconds=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
        )
    except Throttled as throttled:
        # Over the shared rate limit: a new, delayed copy of the message (SQS delays reach
        # 15 minutes), and this one done. Unlike a failure, waiting for capacity must not
        # count toward maxReceiveCount and the DLQ.
        deps.sqs.send_message(
            QueueUrl=queue_url_of(deps.settings, record.event_source_arn),
            MessageBody=record.body,
            DelaySeconds=min(900, max(1, math.ceil(throttled.delay))),
        )
    except RetryLater as retry:
        # Back to the queue for the backoff delay instead of the queue's long visibility
        # timeout; reporting the record as failed keeps the message (and its receive count).
        deps.sqs.change_message_visibility(
            QueueUrl=queue_url_of(deps.settings, record.event_source_arn),
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=int(retry.delay),
        )
        raise


def queue_url_of(settings: Settings, queue_arn: str) -> str:
    name = queue_arn.rsplit(":", 1)[-1]
    for url in (settings.queue_url_high, settings.queue_url_default, settings.queue_url_low):
        if url.rstrip("/").rsplit("/", 1)[-1] == name:
            return url
    raise ValueError(f"no configured queue matches {queue_arn}")


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # A processor per invocation: its state is per batch, and the local poller may invoke
    # the handler from several threads at once.
    processor = BatchProcessor(event_type=EventType.SQS)
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    return dict(response)
