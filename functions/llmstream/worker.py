"""Worker function: SQS event source -> one answer per record (Powertools BatchProcessor)."""

from __future__ import annotations

import math
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from llmstream import observe
from llmstream.answer import run_task
from llmstream.deps import Deps, get_deps
from llmstream.exceptions import ClaimLost, RateLimited, RequestUnusable, RetryLater
from llmstream.models import TaskMessage
from llmstream.observe import Record, logger
from llmstream.settings import Settings

observe.setup("worker")
# The init phase builds settings and clients (as api.py does): a misconfiguration fails
# at cold start, and an invocation's first step, its heartbeat, needs nothing built first.
get_deps()

# A poison message's metric (observe.py), beside the answer outcomes answer.py counts.
DEAD_LETTERED = "AnswersDeadLettered"


class Superseded(Exception):
    """A newer attempt holds this record's task: report the record failed so the message
    is neither deleted nor touched (the newer attempt's heartbeat governs it)."""


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    # The api's trace header came with the message (AWSTraceHeader): this record's log
    # lines and metrics carry the answer's trace id. Keys of an earlier record never do.
    trace = record.attributes.aws_trace_header
    metrics = Record("worker")
    with observe.request_scope(trace_id=observe.trace_id(trace)):
        try:
            _handle(record, lambda_context, metrics, trace)
        finally:
            metrics.flush()


def _handle(
    record: SQSRecord, lambda_context: LambdaContext, metrics: Record, trace: str | None
) -> None:
    deps = get_deps()
    queue_url = queue_url_of(deps.settings, record.event_source_arn)

    def keep_alive() -> None:
        # The message stays invisible one heartbeat window at a time while the answer runs
        # (the queue's own 30-minute timeout is only for the wait before this invocation).
        deps.sqs.change_message_visibility(
            QueueUrl=queue_url,
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=deps.settings.worker_heartbeat_seconds,
        )

    try:
        message = TaskMessage.model_validate_json(record.body)
    except ValidationError as e:
        metrics.count(DEAD_LETTERED)
        metrics.property(message_id=record.message_id)
        dead_letter(deps, record, queue_url, f"not a task message: {e.error_count()} error(s)")
        return
    keep_alive()  # before anything else: a death from here on is noticed within the window
    # Thread-safe keys: the local poller runs several invocations in one process.
    observe.correlate(task_id=message.task_id)
    try:
        run_task(
            deps,
            message.task_id,
            receive_count=int(record.attributes.approximate_receive_count),
            remaining_seconds=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
            keep_alive=keep_alive,
            metrics=metrics,
        )
    except RequestUnusable as poison:
        # Retrying cannot help: straight to the DLQ, where `./run.sh dlq` shows it.
        metrics.count(DEAD_LETTERED)
        metrics.property(message_id=record.message_id)
        dead_letter(deps, record, queue_url, str(poison))
    except ClaimLost as e:
        raise Superseded(str(e)) from e
    except RateLimited as throttled:
        # Over the shared rate limit: a new, delayed copy of the message (SQS delays reach
        # 15 minutes), and this one done. Unlike a failure, waiting for capacity must not
        # count toward maxReceiveCount and the DLQ.
        deps.sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=record.body,
            DelaySeconds=min(900, max(1, math.ceil(throttled.delay))),
            **observe.trace_attribute(trace),
        )
    except RetryLater as retry:
        # Back to the queue for the backoff delay instead of the queue's long visibility
        # timeout; reporting the record as failed keeps the message (and its receive count).
        deps.sqs.change_message_visibility(
            QueueUrl=queue_url,
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=int(retry.delay),
        )
        raise


# The message attribute that names the queue a dead letter came from (SQS's own redrive
# names it in the DeadLetterQueueSourceArn attribute): `./run.sh dlq redrive` sends it back.
SOURCE_QUEUE_ATTRIBUTE = "llmstream_source_queue"


def dead_letter(deps: Deps, record: SQSRecord, queue_url: str, reason: str) -> None:
    """Move a poison message to the DLQ at once (the record then succeeds, so the queue
    does not deliver it again); the reason goes with it, the body is kept as it came."""
    logger.warning("poison message %s to the DLQ: %s", record.message_id, reason)
    deps.sqs.send_message(
        QueueUrl=deps.settings.dead_letter_queue_url,
        MessageBody=record.body,
        MessageAttributes={
            SOURCE_QUEUE_ATTRIBUTE: {"DataType": "String", "StringValue": queue_url},
            "llmstream_reason": {"DataType": "String", "StringValue": reason[:1000]},
        },
    )


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
