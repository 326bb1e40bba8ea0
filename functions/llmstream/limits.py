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
from typing import TYPE_CHECKING, Any

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
    user and day).

    The day's tokens are reserved, then settled: admission adds the request's estimate to
    the counter with a write that fails when the counter would pass the quota, so requests
    in flight together never hold more than the quota; when the call ends, what it used
    less the estimate is added (``settle``; negative when it used less). An answer's
    settlement is tied to its task row (reservations.py), so it happens once.
    """

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

    def admit(self, owner: str, estimate: int = 1, now: float | None = None) -> int | None:
        """Reserve ``estimate`` tokens of ``owner``'s day and take one request of their
        minute; QuotaExceeded with the wait if either is spent. The tokens reserved (to
        settle when the call ends), or None without a daily quota."""
        at = time.time() if now is None else now
        reserved = self.reserve(owner, estimate, at)
        if self.requests_per_minute > 0:
            bucket = Bucket(f"user-rpm#{owner}", self.requests_per_minute)
            # The bucket reads the clock on each try: a try that lost to a concurrent
            # writer must not price its retry at the moment it first read.
            wait = self._buckets.take(bucket, 1, now=now)
            if wait > 0:
                if reserved:
                    self.adjust(owner, -reserved, at)  # not admitted after all
                raise QuotaExceeded(
                    f"request quota spent ({self.requests_per_minute} a minute); "
                    f"retry in {wait:.0f} s",
                    retry_after=wait,
                )
        return reserved

    def reserve(self, owner: str, tokens: int, at: float) -> int | None:
        """Add ``tokens`` (at least 1) to ``owner``'s day if the day stays within the quota;
        QuotaExceeded (until the day rolls over) if not. None without a daily quota."""
        if self.tokens_per_day <= 0:
            return None
        tokens = max(1, int(tokens))
        retry_after = 86400 - at % 86400
        if tokens > self.tokens_per_day:
            raise QuotaExceeded(
                f"this request may use up to {tokens} tokens, more than the daily token "
                f"quota of {self.tokens_per_day}; ask for fewer (max_tokens, shorter input)",
                retry_after=retry_after,
            )
        add = self._add(owner, tokens, at)
        add["ExpressionAttributeValues"][":room"] = {"N": str(self.tokens_per_day - tokens)}
        try:
            self._client.update_item(
                **add,
                # Only while what is used and held stays within the quota: concurrent
                # reservations are serialised by the item, none overspends the day.
                ConditionExpression="attribute_not_exists(used) OR used <= :room",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise StoreUnavailable(str(e)) from e
            used = self.used_today(owner, at)
            raise QuotaExceeded(
                f"daily token quota spent ({used} of {self.tokens_per_day} tokens used or "
                f"held by requests in flight; this one may use up to {tokens}); "
                "it starts again at 00:00 UTC",
                retry_after=retry_after,
            ) from e
        return tokens

    def settle(self, owner: str, reserved: int | None, actual: int, at: float) -> None:
        """A call that reserved ``reserved`` at ``at`` used ``actual``: correct its day."""
        if reserved is not None:
            self.adjust(owner, int(actual) - reserved, at)

    def charge(self, owner: str, tokens: int, now: float | None = None) -> None:
        """Add tokens used without a reservation (an attempt of an answer that is retried)."""
        if tokens > 0:
            self.adjust(owner, tokens, time.time() if now is None else now)

    def adjust(self, owner: str, delta: int, at: float) -> None:
        """Add ``delta`` (may be negative) to ``owner``'s count of the day of ``at``."""
        if self.tokens_per_day <= 0 or delta == 0 or not owner:
            return
        try:
            self._client.update_item(**self._add(owner, delta, at))
        except ClientError as e:
            raise StoreUnavailable(str(e)) from e

    def adjustment(self, owner: str, delta: int, at: float) -> dict[str, Any]:
        """The same addition as ``adjust``, as an item of a DynamoDB transaction."""
        return {"Update": self._add(owner, delta, at)}

    def _add(self, owner: str, delta: int, at: float) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": {"bucket": {"S": _day_key(owner, at)}},
            "UpdateExpression": "ADD used :n SET expires_at = :exp",
            "ExpressionAttributeValues": {
                ":n": {"N": str(int(delta))},
                ":exp": {"N": str(int(at - at % 86400) + 2 * 86400)},
            },
        }

    def used_today(self, owner: str, now: float | None = None) -> int:
        """Tokens of ``owner``'s day used or held by requests in flight."""
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


def text_tokens(text: str) -> int:
    """A text's tokens by the rule the model APIs roughly follow: ~4 characters a token, at
    least 1 (a quota's estimate of an embeddings input or a prompt's message)."""
    return max(1, -(-len(text) // 4))


MESSAGE_OVERHEAD_TOKENS = 4  # a chat message's role and framing (3 at OpenAI), rounded up


def prompt_tokens(texts: list[str]) -> int:
    """A chat prompt of these messages: their text and each message's framing."""
    return sum(text_tokens(t) + MESSAGE_OVERHEAD_TOKENS for t in texts)


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int | None) -> int:
    """Prompt (about 4 characters a token) plus the completion the request allows, capped
    at a typical answer so a large max_tokens does not hold the whole budget."""
    prompt = sum(len(m.get("content") or "") for m in messages) // 4 + 4 * len(messages)
    return prompt + min(max_tokens or 1024, 1024)
