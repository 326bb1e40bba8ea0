"""Chunk log on DynamoDB: partition key ``task_id``, sort key ``seq``, TTL ``expires_at``.

An append of seq n > 1 first reads seq n-1 (a consistent GetItem of its key, flat however
large the table) and fails with LogDiverged if it is missing; the put itself is
conditional on seq n not existing (SeqConflict). The two are not one atomic step: an
atomic check would take TransactWriteItems, which bills each of its two items twice
(4 write units per chunk instead of 1, about the whole per-answer cost again), while a
DynamoDB log only loses items by deletion (TTL after days, or deleting the conversation,
which cancels its answers first), never under a live writer. The read costs one read
unit, a fifth of the write's price.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from llmstream.chunklog.base import ChunkLog
from llmstream.exceptions import LogDiverged, SeqConflict, StoreUnavailable
from llmstream.models import Event, EventKind

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# BatchGetItem takes at most 100 keys per call, BatchWriteItem 25 (DynamoDB limits).
_BATCH_GET_MAX = 100
_BATCH_WRITE_MAX = 25


class DynamoDBChunkLog(ChunkLog):
    def __init__(self, table: str, client: DynamoDBClient, retention_seconds: int) -> None:
        self._table = table
        self._client = client
        self._retention = retention_seconds

    def append(self, task_id: str, seq: int, kind: EventKind, data: dict[str, Any]) -> None:
        if seq < 1:
            raise ValueError(f"seq starts at 1, got {seq}")
        if seq > 1 and not self._exists(task_id, seq - 1):
            raise LogDiverged(f"task {task_id}: cannot write seq {seq}, seq {seq - 1} is missing")
        now = time.time()
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "task_id": {"S": task_id},
                    "seq": {"N": str(seq)},
                    "kind": {"S": kind},
                    "data": {"S": json.dumps(data, separators=(",", ":"), ensure_ascii=False)},
                    # When it was written: readers time their next poll by it.
                    "at": {"N": f"{now:.3f}"},
                    "expires_at": {"N": str(int(now) + self._retention)},
                },
                ConditionExpression="attribute_not_exists(seq)",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise SeqConflict(f"task {task_id}: seq {seq} already written") from e
            raise StoreUnavailable(str(e)) from e

    def _exists(self, task_id: str, seq: int) -> bool:
        try:
            got = self._client.get_item(
                TableName=self._table,
                Key={"task_id": {"S": task_id}, "seq": {"N": str(seq)}},
                ConsistentRead=True,
                ProjectionExpression="seq",
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        return "Item" in got

    def read(self, task_id: str, after: int, limit: int) -> list[Event]:
        # Read by key, not by Query: seqs are dense, so the next ``limit`` keys are known.
        # GetItem/BatchGetItem cost the same whatever the table holds, while a Query on the
        # local emulator grows with the whole table (DESIGN.md, measured facts), and a
        # consistent BatchGetItem sees every write acknowledged before it.
        limit = max(1, min(limit, _BATCH_GET_MAX))
        try:
            if limit == 1:
                got = self._client.get_item(
                    TableName=self._table,
                    Key={"task_id": {"S": task_id}, "seq": {"N": str(after + 1)}},
                    ConsistentRead=True,
                )
                items = [got["Item"]] if "Item" in got else []
            else:
                items = self._batch_get(task_id, range(after + 1, after + 1 + limit))
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        by_seq = {int(item["seq"]["N"]): item for item in items}
        events: list[Event] = []
        seq = after + 1
        while seq in by_seq:  # stop at the first gap: later seqs are not visible yet
            events.append(_event(by_seq[seq]))
            seq += 1
        return events

    def _batch_get(self, task_id: str, seqs: range) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = [
            {"task_id": {"S": task_id}, "seq": {"N": str(s)}} for s in seqs
        ]
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {self._table: {"Keys": keys, "ConsistentRead": True}}
        while request:
            answer = self._client.batch_get_item(RequestItems=request)
            items.extend(answer["Responses"].get(self._table, []))
            request = dict(answer.get("UnprocessedKeys") or {})
        return items

    def delete(self, task_id: str) -> None:
        seqs = [e.seq for e in self.read_all(task_id)]
        try:
            for start in range(0, len(seqs), _BATCH_WRITE_MAX):
                request: dict[str, Any] = {
                    self._table: [
                        {
                            "DeleteRequest": {
                                "Key": {"task_id": {"S": task_id}, "seq": {"N": str(s)}}
                            }
                        }
                        for s in seqs[start : start + _BATCH_WRITE_MAX]
                    ]
                }
                while request:
                    answer = self._client.batch_write_item(RequestItems=request)
                    request = dict(answer.get("UnprocessedItems") or {})
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e

    def ping(self) -> str:
        try:
            status = self._client.describe_table(TableName=self._table)["Table"]["TableStatus"]
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        if status != "ACTIVE":
            raise StoreUnavailable(f"table {self._table} is {status}")
        return status

    def last(self, task_id: str) -> Event | None:
        try:
            answer = self._client.query(
                TableName=self._table,
                KeyConditionExpression="task_id = :t",
                ExpressionAttributeValues={":t": {"S": task_id}},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        items = answer.get("Items", [])
        return _event(items[0]) if items else None


def _event(item: dict[str, Any]) -> Event:
    return Event(
        seq=int(item["seq"]["N"]),
        kind=cast(EventKind, item["kind"]["S"]),
        data=json.loads(item["data"]["S"]),
        written_at=float(item["at"]["N"]) if "at" in item else None,
    )
