"""The sessions table: one row per conversation, keyed by its owner and its id.

The owner is the partition key, so a conversation is only ever read, continued, listed or
deleted as its owner's: another user's session id is simply not there (404). The
``by-updated`` local index lists a user's conversations, most recently active first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from llmstream.exceptions import SessionNotFound, StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

UPDATED_INDEX = "by-updated"  # LocalSecondaryIndexes in template.yaml
TITLE_CHARS = 80


@dataclass(frozen=True)
class Session:
    session_id: str
    title: str
    created_at: float
    updated_at: float
    turns: int


class SessionStore:
    def __init__(self, table: str, client: DynamoDBClient, retention_seconds: int) -> None:
        self._table = table
        self._client = client
        self._retention = retention_seconds

    def start(self, owner: str, session_id: str, first_message: str, now: float) -> None:
        """A new conversation of ``owner``, with its first turn counted."""
        title = " ".join(first_message.split())[:TITLE_CHARS]
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "owner": {"S": owner},
                    "session_id": {"S": session_id},
                    "title": {"S": title},
                    "created_at": {"N": repr(now)},
                    "updated_at": {"N": repr(now)},
                    "turns": {"N": "1"},
                    "expires_at": {"N": str(int(now) + self._retention)},
                },
                ConditionExpression="attribute_not_exists(session_id)",
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e

    def touch(self, owner: str, session_id: str, now: float) -> None:
        """Count a new turn in ``owner``'s conversation; SessionNotFound if it is not theirs
        (or does not exist): one conditional write is both the check and the update."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"owner": {"S": owner}, "session_id": {"S": session_id}},
                UpdateExpression="SET updated_at = :now, expires_at = :exp ADD turns :one",
                ConditionExpression="attribute_exists(session_id)",
                ExpressionAttributeValues={
                    ":now": {"N": repr(now)},
                    ":exp": {"N": str(int(now) + self._retention)},
                    ":one": {"N": "1"},
                },
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise SessionNotFound(session_id) from e
            raise StoreUnavailable(str(e)) from e

    def get(self, owner: str, session_id: str) -> Session:
        try:
            got = self._client.get_item(
                TableName=self._table,
                Key={"owner": {"S": owner}, "session_id": {"S": session_id}},
                ConsistentRead=True,
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        if "Item" not in got:
            raise SessionNotFound(session_id)
        return _session(got["Item"])

    def list(self, owner: str, limit: int = 50) -> list[Session]:
        """``owner``'s conversations, most recently active first."""
        try:
            answer = self._client.query(
                TableName=self._table,
                IndexName=UPDATED_INDEX,
                KeyConditionExpression="#o = :o",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":o": {"S": owner}},
                ScanIndexForward=False,
                Limit=limit,
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        return [_session(item) for item in answer.get("Items", [])]

    def delete(self, owner: str, session_id: str) -> None:
        try:
            self._client.delete_item(
                TableName=self._table,
                Key={"owner": {"S": owner}, "session_id": {"S": session_id}},
                ConditionExpression="attribute_exists(session_id)",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise SessionNotFound(session_id) from e
            raise StoreUnavailable(str(e)) from e


def _session(item: dict[str, Any]) -> Session:
    return Session(
        session_id=item["session_id"]["S"],
        title=item.get("title", {}).get("S", ""),
        created_at=float(item["created_at"]["N"]),
        updated_at=float(item["updated_at"]["N"]),
        turns=int(item.get("turns", {}).get("N", "0")),
    )
