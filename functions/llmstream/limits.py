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

from llmstream.exceptions import QuotaExceeded, StoreUnavailable

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
            available = min(bucket.per_minute, tokens + max(0.0, at - updated) * bucket.rate)
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
            available = min(bucket.per_minute, tokens + max(0.0, at - updated) * bucket.rate)
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


class UserQuotas:
    """Each user's own limits, on top of the shared model limits: requests per minute (a
    token bucket per user, taken with the same conditional write as the shared ones, so
    concurrent requests never overspend it) and model tokens per UTC day (a counter per
    user and day: a request is admitted while the day's count is under the quota, and the
    tokens an answer used are added when it ends; answers in flight may run it over by
    what they use, as the model providers' own usage limits do)."""

    def __init__(
        self,
        buckets: TokenBuckets,
        client: DynamoDBClient,
        table: str,
        *,
        requests_per_minute: int,
        tokens_per_day: int,
    ) -> None:
        self._buckets = buckets
        self._client = client
        self._table = table
        self.requests_per_minute = requests_per_minute
        self.tokens_per_day = tokens_per_day

    def admit(self, owner: str, now: float | None = None) -> None:
        """Take one request of ``owner``'s minute; QuotaExceeded with the wait if none is
        left, or if today's tokens are spent."""
        at = time.time() if now is None else now
        if self.tokens_per_day > 0:
            used = self.used_today(owner, at)
            if used >= self.tokens_per_day:
                raise QuotaExceeded(
                    f"daily token quota spent ({used} of {self.tokens_per_day} tokens); "
                    "it starts again at 00:00 UTC",
                    retry_after=86400 - at % 86400,
                )
        if self.requests_per_minute > 0:
            bucket = Bucket(f"user-rpm#{owner}", self.requests_per_minute)
            # The bucket reads the clock on each try: a try that lost to a concurrent
            # writer must not price its retry at the moment it first read.
            wait = self._buckets.take(bucket, 1, now=now)
            if wait > 0:
                raise QuotaExceeded(
                    f"request quota spent ({self.requests_per_minute} a minute); "
                    f"retry in {wait:.0f} s",
                    retry_after=wait,
                )

    def charge(self, owner: str, tokens: int, now: float | None = None) -> None:
        """Add the tokens an answer (or an embeddings call) used to ``owner``'s day."""
        if self.tokens_per_day <= 0 or tokens <= 0 or not owner:
            return
        at = time.time() if now is None else now
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"bucket": {"S": _day_key(owner, at)}},
                UpdateExpression="ADD used :n SET expires_at = :exp",
                ExpressionAttributeValues={
                    ":n": {"N": str(int(tokens))},
                    ":exp": {"N": str(int(at - at % 86400) + 2 * 86400)},
                },
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e

    def used_today(self, owner: str, now: float | None = None) -> int:
        at = time.time() if now is None else now
        try:
            got = self._client.get_item(
                TableName=self._table,
                Key={"bucket": {"S": _day_key(owner, at)}},
                ConsistentRead=True,
            )
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e
        return int(got.get("Item", {}).get("used", {}).get("N", "0"))


def _day_key(owner: str, at: float) -> str:
    return f"user-tokens#{owner}#{time.strftime('%Y%m%d', time.gmtime(at))}"


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int | None) -> int:
    """Prompt (about 4 characters a token) plus the completion the request allows, capped
    at a typical answer so a large max_tokens does not hold the whole budget."""
    prompt = sum(len(m.get("content") or "") for m in messages) // 4 + 4 * len(messages)
    return prompt + min(max_tokens or 1024, 1024)
