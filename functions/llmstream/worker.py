"""Worker function: SQS event source -> one answer per record (Powertools BatchProcessor)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from llmstream.answer import run_task
from llmstream.deps import get_deps
from llmstream.models import TaskMessage

logger = Logger()


def record_handler(record: SQSRecord) -> None:
    # A body that is not a task message raises: the record is reported as failed and, after
    # maxReceiveCount deliveries, lands in the DLQ (a poison message, not an endless retry).
    message = TaskMessage.model_validate_json(record.body)
    # Thread-safe keys: the local poller runs several invocations in one process.
    logger.thread_safe_append_keys(task_id=message.task_id)
    run_task(get_deps(), message.task_id)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # A processor per invocation: its state is per batch, and the local poller may invoke
    # the handler from several threads at once.
    processor = BatchProcessor(event_type=EventType.SQS)
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    return dict(response)
