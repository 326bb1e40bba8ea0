"""An answer's reservation of its owner's daily tokens, settled once per task.

Admission reserves an estimate on the owner's day (limits.UserQuotas) and writes it on the
task row (``reserved``). Whoever ends the task settles it: one DynamoDB transaction removes
``reserved`` from the row, on condition it is still the amount reserved, and adds what the
answer used less the reservation to the owner's day. A second attempt after a crash, the
replay of a log that had already ended, or a cancel racing the worker finds the row settled
and changes nothing: a task is settled once, however many attempts it took.
"""

from __future__ import annotations

import logging

from botocore.exceptions import ClientError

from llmstream.deps import Deps
from llmstream.exceptions import StoreUnavailable
from llmstream.tasks import Task

logger = logging.getLogger(__name__)
_CONFLICT_TRIES = 4


def settle(deps: Deps, task: Task, actual: int) -> bool:
    """Settle ``task``'s reservation with the ``actual`` tokens its answer used (0: release
    it); True if this call settled it, False if it had nothing (left) to settle."""
    if not task.reserved:
        return False
    items = [
        {
            "Update": {
                "TableName": deps.settings.requests_table,
                "Key": {"task_id": {"S": task.task_id}},
                "UpdateExpression": "REMOVE reserved",
                "ConditionExpression": "reserved = :r",
                "ExpressionAttributeValues": {":r": {"N": str(task.reserved)}},
            }
        },
        # The day the tokens were reserved on (a day's count is only ever its own).
        deps.quotas.adjustment(task.owner, int(actual) - task.reserved, task.created_at),
    ]
    for _ in range(_CONFLICT_TRIES):
        try:
            deps.dynamodb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
        except ClientError as e:
            if e.response["Error"]["Code"] != "TransactionCanceledException":
                raise StoreUnavailable(str(e)) from e
            reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
            if "ConditionalCheckFailed" in reasons or not reasons:
                return False  # settled already (by an earlier attempt, or a cancel)
            continue  # a concurrent write to the day's count: the transaction is retried
        return True
    raise StoreUnavailable(f"task {task.task_id}: its settlement kept conflicting")


def release(deps: Deps, task: Task) -> bool:
    """Give back the reservation of a task that will never call the model."""
    return settle(deps, task, 0)


def settle_quietly(deps: Deps, task: Task, actual: int) -> None:
    """``settle``, for the paths where a failed settlement must not hide how the request
    ended: the reservation then stays charged (the user's day is over-, not under-counted)."""
    try:
        settle(deps, task, actual)
    except StoreUnavailable:
        logger.warning("task %s: could not settle its reservation", task.task_id)
