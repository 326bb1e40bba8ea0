"""The requests table: one row per accepted chat request, its status and timings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from llmstream.exceptions import ClaimLost, StoreUnavailable, TaskAlreadyFinal, TaskNotFound
from llmstream.models import TaskState

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

SESSION_INDEX = "by-owner-session"  # GlobalSecondaryIndexes in template.yaml
HOUR_INDEX = "by-hour"
_ser = TypeSerializer()
_de = TypeDeserializer()


@dataclass
class Task:
    task_id: str
    session_id: str
    status: TaskState
    model: str
    message: str
    # The signed-in user's sub. The by-owner-session index is keyed by owner and session
    # together (``session_key``), so a conversation is only ever read as its owner's.
    owner: str = ""
    priority: int = 0
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    attempt: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    heartbeat_at: float | None = None  # the running attempt's last sign of life
    first_token_at: float | None = None
    finished_at: float | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    cancel_on_disconnect: bool = False
    retry_at: float | None = None
    answer: str | None = None
    deleted: bool = False  # a tombstone: its conversation was deleted
    hour: str | None = None  # UTC yyyymmddhh of created_at: the by-hour index of /stats
    # The request started its session (no session_id given): the worker has no history to
    # look up, which saves a query on the answer's critical path.
    new_session: bool = False
    # The X-Ray trace of the request (observe.py): the worker's and the stream's log lines
    # of this answer carry it too.
    trace_id: str | None = None
    reserved: int | None = None  # owner's day tokens held until settled (reservations.py)

    def to_item(self, expires_at: int) -> dict[str, Any]:
        raw = {k: v for k, v in self.__dict__.items() if v is not None}
        raw["expires_at"] = expires_at
        raw["session_key"] = session_key(self.owner, self.session_id)
        return {k: _ser.serialize(_to_dynamo(v)) for k, v in raw.items()}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Task:
        raw = {k: _from_dynamo(_de.deserialize(v)) for k, v in item.items()}
        raw.pop("expires_at", None)
        known = cls.__dataclass_fields__
        base = {"session_id": "", "model": "", "message": ""}  # a tombstone keeps none
        return cls(**{**base, **{k: v for k, v in raw.items() if k in known}})


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    return value


def worker_lost(task: Task, window: float, now: float) -> bool:
    """A running task whose worker missed two heartbeats (it beats every quarter window):
    it has died, and its message comes back on the queue within the window."""
    return (
        task.status == "running"
        and task.heartbeat_at is not None
        and now - task.heartbeat_at > window / 2 + 1
    )


def session_key(owner: str, session_id: str) -> str:
    return f"{owner}#{session_id}"


def hour_of(timestamp: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(timestamp))


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


def _partial(item: dict[str, Any]) -> Task:
    """A task from the by-hour index, which projects only what /stats reads."""
    raw = {k: _from_dynamo(_de.deserialize(v)) for k, v in item.items()}
    known = Task.__dataclass_fields__
    base = {"session_id": "", "model": "", "message": ""}
    return Task(**{**base, **{k: v for k, v in raw.items() if k in known}})


class TaskStore:
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
                        ":since": _ser.serialize(_to_dynamo(float(since))),
                    },
                }
                tasks.extend(_query_pages(self._client, kwargs, limit - len(tasks), _partial))
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
                    ":now": _ser.serialize(_to_dynamo(time.time() if now is None else now)),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                task = self.get(task_id)  # raises TaskNotFound if the row is gone
                raise TaskAlreadyFinal(f"task {task_id} is {task.status}") from e
            raise StoreUnavailable(str(e)) from e
        return Task.from_item(got["Attributes"])

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
                    ":now": _ser.serialize(_to_dynamo(time.time() if now is None else now)),
                },
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise StoreUnavailable(str(e)) from e
        return True

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
        self._update(task_id, attempt, fields)

    def _update(self, task_id: str, attempt: int, fields: dict[str, Any]) -> None:
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": _ser.serialize(_to_dynamo(v)) for i, v in enumerate(fields.values())}
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
