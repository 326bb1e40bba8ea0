"""Rate limits shared by every worker: requests and tokens per minute, as token buckets.

Each bucket is one DynamoDB item (tokens, updated_at, version). Taking from it is a read
and a conditional write on the version (optimistic concurrency), so concurrent workers never
both spend the same tokens. A refused take says how long until there is enough; the worker
then puts the task back on its queue for that long instead of sleeping (Lambda bills sleep).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from llmstream.exceptions import StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)
_CONTENTION_TRIES = 8


@dataclass(frozen=True)
class Bucket:
    name: str
    per_minute: int  # capacity and refill per minute; 0 means no limit

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0


class TokenBuckets:
    def __init__(self, table: str, client: DynamoDBClient) -> None:
        self._table = table
        self._client = client

    def take(self, bucket: Bucket, cost: float, now: float | None = None) -> float:
        """Take ``cost`` tokens; return 0 if taken, else the seconds until they would be."""
        if bucket.per_minute <= 0:
            return 0.0
        cost = min(cost, bucket.per_minute)  # a cost over capacity waits for a full bucket
        for _ in range(_CONTENTION_TRIES):
            at = time.time() if now is None else now
            tokens, updated, version = self._read(bucket, at)
            available = min(bucket.per_minute, tokens + (at - updated) * bucket.rate)
            if available < cost:
                return (cost - available) / bucket.rate
            if self._write(bucket, available - cost, at, version):
                return 0.0
        # Heavy contention: let the caller come back a moment later.
        return 1.0

    def give_back(self, bucket: Bucket, amount: float, now: float | None = None) -> None:
        """Adjust after the fact (actual usage below or above the estimate); may go below 0."""
        if bucket.per_minute <= 0 or amount == 0:
            return
        for _ in range(_CONTENTION_TRIES):
            at = time.time() if now is None else now
            tokens, updated, version = self._read(bucket, at)
            available = min(bucket.per_minute, tokens + (at - updated) * bucket.rate)
            if self._write(bucket, min(bucket.per_minute, available + amount), at, version):
                return
        logger.warning("could not settle %s bucket by %.0f after contention", bucket.name, amount)

    def _read(self, bucket: Bucket, now: float) -> tuple[float, float, int]:
        try:
            got = self._client.get_item(
                TableName=self._table, Key={"bucket": {"S": bucket.name}}, ConsistentRead=True
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        item = got.get("Item")
        if item is None:  # a new bucket starts full
            return float(bucket.per_minute), now, 0
        return (
            float(item["tokens"]["N"]),
            float(item["updated_at"]["N"]),
            int(item["version"]["N"]),
        )

    def _write(self, bucket: Bucket, tokens: float, now: float, version: int) -> bool:
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "bucket": {"S": bucket.name},
                    "tokens": {"N": repr(round(tokens, 4))},
                    "updated_at": {"N": repr(now)},
                    "version": {"N": str(version + 1)},
                },
                # Only if nobody wrote since our read (a new bucket has no version yet).
                ConditionExpression="attribute_not_exists(version) OR version = :v",
                ExpressionAttributeValues={":v": {"N": str(version)}},
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False  # another worker got there first: read again
            raise StoreUnavailable(str(e)) from e
        return True


class ModelLimits:
    """Requests per minute and tokens per minute for the model, shared by all workers."""

    def __init__(self, buckets: TokenBuckets, rpm: int, tpm: int, prefix: str = "model") -> None:
        self.buckets = buckets
        self.rpm = Bucket(f"{prefix}-rpm", rpm)
        self.tpm = Bucket(f"{prefix}-tpm", tpm)

    def acquire(self, estimated_tokens: int) -> float:
        """0 if the call may go now (one request and the estimate taken), else a delay."""
        wait = self.buckets.take(self.rpm, 1)
        if wait > 0:
            return wait
        wait = self.buckets.take(self.tpm, estimated_tokens)
        if wait > 0:
            self.buckets.give_back(self.rpm, 1)  # the request does not go now after all
        return wait

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the token bucket once the real usage is known."""
        self.buckets.give_back(self.tpm, estimated_tokens - actual_tokens)


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int | None) -> int:
    """Prompt (about 4 characters a token) plus the completion the request allows, capped
    at a typical answer so a large max_tokens does not hold the whole budget."""
    prompt = sum(len(m.get("content") or "") for m in messages) // 4 + 4 * len(messages)
    return prompt + min(max_tokens or 1024, 1024)
