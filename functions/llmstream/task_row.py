"""A request's row: the Task record, and how it is stored in the requests table (its
DynamoDB types, the keys of its indexes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from llmstream.models import TaskState

SESSION_INDEX = "by-owner-session"  # GlobalSecondaryIndexes in template.yaml
HOUR_INDEX = "by-hour"
_ser = TypeSerializer()
_de = TypeDeserializer()


def attribute(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (floats as exact decimals)."""
    return dict(_ser.serialize(_to_dynamo(value)))


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
    # A request in OpenAI's shape (v1/): the conversation it sends (role and text of each
    # message) in place of ``message``, which then holds its last user text (the title).
    input: list[dict[str, Any]] | None = None
    top_p: float | None = None
    # Its metadata as JSON text: a map of the caller's own keys is no DynamoDB map.
    metadata: str | None = None
    api: str | None = None  # "responses" or "chat.completions": the shape it was asked in
    background: bool = False  # a Responses request with background: true
    previous_response_id: str | None = None  # the Responses turn it continues
    # store: false (Responses): the row and its log are deleted once the answer is served.
    store: bool = True
    # Function tools and structured output as the model takes them (Chat Completions'
    # shapes), JSON text; and the calls the answer made ({"id", "name", "arguments"}).
    tools: str | None = None
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    response_format: str | None = None
    calls: str | None = None

    def to_item(self, expires_at: int) -> dict[str, Any]:
        raw = {k: v for k, v in self.__dict__.items() if v is not None}
        raw["expires_at"] = expires_at
        raw["session_key"] = session_key(self.owner, self.session_id)
        return {k: attribute(v) for k, v in raw.items()}

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


def partial(item: dict[str, Any]) -> Task:
    """A task from the by-hour index, which projects only what /stats reads."""
    raw = {k: _from_dynamo(_de.deserialize(v)) for k, v in item.items()}
    known = Task.__dataclass_fields__
    base = {"session_id": "", "model": "", "message": ""}
    return Task(**{**base, **{k: v for k, v in raw.items() if k in known}})
