"""The worker's writes to a request's row, each fenced by its attempt: the claim that
starts one, and the heartbeat, deferral, first token and ending that only the attempt
holding the task may write (a superseded attempt's write is ClaimLost)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from llmstream.exceptions import ClaimLost, StoreUnavailable, TaskAlreadyFinal, TaskNotFound
from llmstream.models import TaskState
from llmstream.task_row import Task, attribute

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class AttemptWrites:
    """What TaskStore does for the worker (its rows as the routes see them: tasks.py)."""

    _table: str
    _client: DynamoDBClient

    def get(self, task_id: str) -> Task:
        raise NotImplementedError

    def claim(self, task_id: str, now: float | None = None) -> Task:
        """Take the task for a new attempt: queued, waiting or running (a crashed attempt)
        -> running.

        The conditional write makes the claim atomic: a final task is never run again.
        """
        try:
            got = self._client.update_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                UpdateExpression=(
                    "SET #s = :running, attempt = if_not_exists(attempt, :zero) + :one, "
                    "started_at = :now, heartbeat_at = :now REMOVE retry_at"
                ),
                ConditionExpression=(
                    "attribute_exists(task_id) AND #s IN (:queued, :waiting, :running)"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":running": {"S": "running"},
                    ":queued": {"S": "queued"},
                    ":waiting": {"S": "waiting"},
                    ":zero": {"N": "0"},
                    ":one": {"N": "1"},
                    ":now": attribute(time.time() if now is None else now),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                task = self.get(task_id)  # raises TaskNotFound if the row is gone
                raise TaskAlreadyFinal(f"task {task_id} is {task.status}") from e
            raise StoreUnavailable(str(e)) from e
        return Task.from_item(got["Attributes"])

    def control(self, task_id: str) -> tuple[bool, int]:
        """What a running answer checks twice a second: is a cancel requested, and which
        attempt holds the task (a newer one means this one must stop writing)."""
        try:
            got = self._client.get_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                ConsistentRead=True,
                ProjectionExpression="cancel_requested, attempt",
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        item = got.get("Item")
        if item is None:
            raise TaskNotFound(task_id)  # deleted with its conversation: stop
        return (
            bool(item.get("cancel_requested", {}).get("BOOL", False)),
            int(item.get("attempt", {}).get("N", "0")),
        )

    def beat(self, task_id: str, attempt: int, now: float | None = None) -> None:
        """The running attempt is alive (ClaimLost if it no longer holds the task)."""
        self._update(task_id, attempt, {"heartbeat_at": time.time() if now is None else now})

    def defer(self, task_id: str, attempt: int, retry_at: float, error: str) -> None:
        """running -> waiting: the message goes back to its queue until ``retry_at``."""
        self._update(task_id, attempt, {"status": "waiting", "retry_at": retry_at, "error": error})

    def mark_first_token(self, task_id: str, attempt: int, at: float) -> None:
        self._update(task_id, attempt, {"first_token_at": at})

    def finish(
        self,
        task_id: str,
        attempt: int,
        status: TaskState,
        *,
        usage: dict[str, Any] | None = None,
        error: str | None = None,
        answer: str | None = None,
        calls: str | None = None,
        now: float | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "status": status,
            "finished_at": time.time() if now is None else now,
        }
        if usage is not None:
            fields["usage"] = usage
        if error is not None:
            fields["error"] = error
        if answer is not None:
            fields["answer"] = answer
        if calls is not None:
            fields["calls"] = calls  # the function calls the answer made, as JSON
        self._update(task_id, attempt, fields)

    def _update(self, task_id: str, attempt: int, fields: dict[str, Any]) -> None:
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": attribute(v) for i, v in enumerate(fields.values())}
        values[":attempt"] = {"N": str(attempt)}
        values[":running"] = {"S": "running"}
        names["#s"] = "status"
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                # Only the attempt that owns the task may move it on.
                ConditionExpression="attempt = :attempt AND #s = :running",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ClaimLost(f"task {task_id}: attempt {attempt} no longer owns it") from e
            raise StoreUnavailable(str(e)) from e
