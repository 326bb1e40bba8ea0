"""The requests table: one row per accepted chat request, its status and timings, as the
routes read and change it (the worker's attempt-fenced writes: attempt_rows.py; the row
itself: task_row.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from llmstream.attempt_rows import AttemptWrites
from llmstream.exceptions import StoreUnavailable, TaskNotFound
from llmstream.task_row import (
    HOUR_INDEX,
    SESSION_INDEX,
    Task,
    attribute,
    hour_of,
    partial,
    session_key,
    worker_lost,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# The record's names, as the rest of the package imports them from here.
__all__ = ["OwnedTasks", "Task", "TaskStore", "hour_of", "session_key", "worker_lost"]


def _hours(since: float, now: float) -> list[str]:
    """The hour buckets from ``since`` to ``now``, oldest first."""
    every = {hour_of(t) for t in range(int(since), int(now) + 3600, 3600) if t <= now}
    return sorted(every | {hour_of(now)})


def _query_pages(
    client: DynamoDBClient,
    kwargs: dict[str, Any],
    limit: int,
    parse: Callable[[dict[str, Any]], Task],
) -> list[Task]:
    """A query's items, page after page (a page stops at 1 MB), until ``limit``."""
    tasks: list[Task] = []
    while len(tasks) < limit:
        page = client.query(**kwargs)
        tasks.extend(parse(item) for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return tasks


class TaskStore(AttemptWrites):
    def __init__(self, table: str, client: DynamoDBClient, retention_seconds: int) -> None:
        self._table = table
        self._client = client
        self._retention = retention_seconds

    def create(self, task: Task) -> None:
        task.hour = task.hour or hour_of(task.created_at)
        try:
            self._client.put_item(
                TableName=self._table,
                Item=task.to_item(int(time.time()) + self._retention),
                ConditionExpression="attribute_not_exists(task_id)",
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e

    def get(self, task_id: str) -> Task:
        try:
            got = self._client.get_item(
                TableName=self._table, Key={"task_id": {"S": task_id}}, ConsistentRead=True
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        if "Item" not in got:
            raise TaskNotFound(task_id)
        return Task.from_item(got["Item"])

    def recent(self, since: float, now: float | None = None, limit: int = 2000) -> list[Task]:
        """Tasks created since ``since`` (the by-hour index; one query per hour bucket)."""
        now = time.time() if now is None else now
        tasks: list[Task] = []
        try:
            for hour in _hours(since, now):
                kwargs: dict[str, Any] = {
                    "TableName": self._table,
                    "IndexName": HOUR_INDEX,
                    "KeyConditionExpression": "#h = :h AND created_at >= :since",
                    "ExpressionAttributeNames": {"#h": "hour"},
                    "ExpressionAttributeValues": {
                        ":h": {"S": hour},
                        ":since": attribute(float(since)),
                    },
                }
                tasks.extend(_query_pages(self._client, kwargs, limit - len(tasks), partial))
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        return tasks[:limit]

    def owned_by(self, owner: str) -> OwnedTasks:
        """The table as ``owner`` sees it: the only view the HTTP routes get."""
        return OwnedTasks(self, owner)

    def session(self, owner: str, session_id: str, limit: int = 100) -> list[Task]:
        """The session's last ``limit`` tasks, oldest first (the by-owner-session index)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": SESSION_INDEX,
            "KeyConditionExpression": "session_key = :s",
            "ExpressionAttributeValues": {":s": {"S": session_key(owner, session_id)}},
            "ScanIndexForward": False,  # newest first, so `limit` keeps the recent turns
            "Limit": limit,
        }
        try:
            tasks = _query_pages(self._client, kwargs, limit, Task.from_item)
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        return tasks[:limit][::-1]

    def request_cancel(self, task_id: str, owner: str) -> Task:
        """Flag a live task of ``owner`` for cancelling; a final one is returned as it is
        (idempotent); another owner's is not found."""
        written = self._flag_cancel(task_id, owner, "ALL_NEW")
        if written is None:
            return self.owned_by(owner).get(task_id)  # final already, or not found
        return Task.from_item(written)

    def cancel_on_disconnect(self, task_id: str, owner: str) -> None:
        """The stream function's cancel when a viewer leaves: the flag of ``request_cancel``,
        nothing read back (a final or missing task is left alone). Its IAM statement
        (template.yaml, StreamFunction, CancelOnDisconnect) allows this update's attributes
        only and no whole-row return values: keep the two in step."""
        self._flag_cancel(task_id, owner, "NONE")

    def _flag_cancel(
        self, task_id: str, owner: str, returns: Literal["ALL_NEW", "NONE"]
    ) -> dict[str, Any] | None:
        """Set cancel_requested on a live task of ``owner``: the row as ``returns`` gives it
        back, or None if the task is final, another owner's or gone."""
        try:
            got = self._client.update_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                UpdateExpression="SET cancel_requested = :true",
                ConditionExpression=(
                    "attribute_exists(task_id) AND #o = :owner "
                    "AND #s IN (:queued, :waiting, :running)"
                ),
                ExpressionAttributeNames={"#s": "status", "#o": "owner"},
                ExpressionAttributeValues={
                    ":true": {"BOOL": True},
                    ":owner": {"S": owner},
                    ":queued": {"S": "queued"},
                    ":waiting": {"S": "waiting"},
                    ":running": {"S": "running"},
                },
                ReturnValues=returns,
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise StoreUnavailable(str(e)) from e
        return dict(got.get("Attributes", {}))

    def tombstone(self, task_id: str, owner: str, now: float | None = None) -> None:
        """Replace the row with what is left of a deleted task: no text, no session, status
        cancelled. A running attempt sees its claim gone and stops; a redelivered message
        finds the task final and is dropped; the row itself expires within a day."""
        at = time.time() if now is None else now
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "task_id": {"S": task_id},
                    "owner": {"S": owner},
                    "status": {"S": "cancelled"},
                    "deleted": {"BOOL": True},
                    "finished_at": {"N": repr(at)},
                    "expires_at": {"N": str(int(at) + 86400)},
                },
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e

    def cancel_unstarted(self, task_id: str, now: float | None = None) -> bool:
        """queued/waiting -> cancelled, if no worker holds the task; True if it did."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}},
                UpdateExpression="SET #s = :cancelled, finished_at = :now",
                ConditionExpression="#s IN (:queued, :waiting)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":cancelled": {"S": "cancelled"},
                    ":queued": {"S": "queued"},
                    ":waiting": {"S": "waiting"},
                    ":now": attribute(time.time() if now is None else now),
                },
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise StoreUnavailable(str(e)) from e
        return True


class OwnedTasks:
    """The requests table as one user sees it. Every read checks the row's owner, so a task
    of another user is answered exactly like one that does not exist."""

    def __init__(self, store: TaskStore, owner: str) -> None:
        if not owner:
            raise ValueError("an owner is required")
        self._store = store
        self.owner = owner

    def get(self, task_id: str) -> Task:
        task = self._store.get(task_id)
        if task.owner != self.owner or task.deleted:
            raise TaskNotFound(task_id)
        return task

    def request_cancel(self, task_id: str) -> Task:
        return self._store.request_cancel(task_id, self.owner)

    def cancel_unstarted(self, task_id: str) -> bool:
        self.get(task_id)
        return self._store.cancel_unstarted(task_id)

    def session(self, session_id: str, limit: int = 100) -> list[Task]:
        return self._store.session(self.owner, session_id, limit)
