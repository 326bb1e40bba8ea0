"""An answer's reservation of its owner's daily tokens, settled once per task.

Admission reserves an estimate on the owner's day (limits.UserQuotas) and writes it on the
task row (``reserved``). A running attempt consumes it as it goes (``consume``: what it has
used comes out of the row's ``reserved``; the day already counts it), so what a worker that
dies mid-answer used stays counted while the rest stays reserved for the next attempt.
Whoever ends the task settles it: one DynamoDB transaction removes ``reserved`` from the
row, on condition it is still the amount left, and adds what the answer used less that
amount to the owner's day. A second attempt after a crash, the replay of a log that had
already ended, or a cancel racing the worker finds the row settled and changes nothing: a
task is settled once, however many attempts it took. A ``reserved`` that changed under a
caller (a checkpoint, a stale index read) is read again, not mistaken for settled.
"""

from __future__ import annotations

import logging

from botocore.exceptions import ClientError

from llmstream.deps import Deps
from llmstream.exceptions import StoreUnavailable, TaskNotFound
from llmstream.tasks import Task

logger = logging.getLogger(__name__)
_CONFLICT_TRIES = 4


def settle(deps: Deps, task: Task, actual: int) -> bool:
    """Settle ``task``'s reservation with the ``actual`` tokens its answer used beyond what
    it consumed of it (0: release it); True if this call settled it, False if it had nothing
    (left) to settle."""
    for _ in range(_CONFLICT_TRIES):
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
        try:
            deps.dynamodb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
        except ClientError as e:
            if e.response["Error"]["Code"] != "TransactionCanceledException":
                raise StoreUnavailable(str(e)) from e
            reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
            if "ConditionalCheckFailed" in reasons or not reasons:
                task.reserved = _left(deps, task)  # settled already, or consumed meanwhile
            continue  # or a concurrent write to the day's count: the transaction is retried
        task.reserved = None
        return True
    raise StoreUnavailable(f"task {task.task_id}: its settlement kept conflicting")


def consume(deps: Deps, task: Task, tokens: int) -> int:
    """Take up to ``tokens`` that a running attempt has used out of the task's reservation
    (the day counts them already); how many it took. What it could not take (none left, or
    none to begin with) is for the caller to charge to the day itself."""
    for _ in range(_CONFLICT_TRIES):
        left = task.reserved or 0
        take = min(max(0, int(tokens)), left)
        if take <= 0:
            return 0
        update = "REMOVE reserved" if take == left else "SET reserved = :left"
        values = {":r": {"N": str(left)}}
        if take < left:
            values[":left"] = {"N": str(left - take)}
        try:
            deps.dynamodb.update_item(
                TableName=deps.settings.requests_table,
                Key={"task_id": {"S": task.task_id}},
                UpdateExpression=update,
                ConditionExpression="reserved = :r",
                ExpressionAttributeValues=values,
            )
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise StoreUnavailable(str(e)) from e
            task.reserved = _left(deps, task)  # settled or given back, or taken meanwhile
            continue
        task.reserved = (left - take) or None
        return take
    return 0  # contended each time: the caller charges the day instead


def _left(deps: Deps, task: Task) -> int | None:
    """What the row still holds reserved (None: settled, given back, or no row)."""
    try:
        return deps.tasks.get(task.task_id).reserved or None
    except TaskNotFound:
        return None


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
