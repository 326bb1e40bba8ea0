"""A cap on each user's open streams, as leases in the rate-limit table.

A user's cap of N is N slot items, ``streams#<sub>#<k>``. Opening a stream takes a free slot
with one conditional put (free: no item, or a lease that has run out), trying the slots from
a random start so that concurrent opens rarely meet on one slot. An open stream renews its
lease every third of the lease time and deletes it when it closes. A counter would leak a
count for every environment that dies with streams open; a lease that is not renewed frees
its slot by itself within the lease time, and TTL (``expires_at``) clears the item later.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from botocore.exceptions import ClientError

from llmstream.exceptions import StoreUnavailable, TooManyStreams

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)
# TTL deletes an item up to days after it expires; this only keeps the table from growing.
_TTL_AFTER_LEASE = 3600


@dataclass
class Lease:
    """One slot of one user's streams, held until ``until`` unless renewed."""

    owner: str
    slot: str
    lease_id: str
    until: float
    released: bool = field(default=False, compare=False)


class StreamLeases:
    """Taking, renewing and giving back slots of a user's open streams."""

    def __init__(
        self,
        table: str,
        client: DynamoDBClient,
        *,
        max_streams: int,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._table = table
        self._client = client
        self.max_streams = max_streams
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._rng = rng or random.Random()

    def now(self) -> float:
        return self._clock()

    @property
    def enabled(self) -> bool:
        return self.max_streams > 0

    @property
    def renew_every(self) -> float:
        """A third of the lease: two renewals may fail (or be late) before it runs out."""
        return self.lease_seconds / 3

    def acquire(self, owner: str) -> Lease | None:
        """A lease on one of ``owner``'s free slots (None when the cap is off); all taken:
        TooManyStreams, with the seconds until the first of them could run out."""
        if not self.enabled:
            return None
        start = self._rng.randrange(self.max_streams)
        lease_id = uuid.uuid4().hex
        earliest: float | None = None
        for i in range(self.max_streams):
            slot = f"streams#{owner}#{(start + i) % self.max_streams}"
            now = self._clock()
            held_until = self._put(slot, owner, lease_id, now)
            if held_until is None:
                return Lease(owner, slot, lease_id, now + self.lease_seconds)
            earliest = held_until if earliest is None else min(earliest, held_until)
        now = self._clock()
        wait = (earliest if earliest is not None else now + self.lease_seconds) - now
        raise TooManyStreams(
            f"too many open streams: {self.max_streams} at a time per user; close one, "
            f"or retry in {max(1, round(wait))} s",
            retry_after=max(1.0, wait),
        )

    def renew(self, lease: Lease) -> bool:
        """Extend ``lease``; False if it is no longer ours (it ran out and was taken)."""
        now = self._clock()
        until = now + self.lease_seconds
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"bucket": {"S": lease.slot}},
                UpdateExpression="SET lease_until = :until, expires_at = :exp",
                # Never recreates a released slot: a deleted item has no lease_id.
                ConditionExpression="lease_id = :id",
                ExpressionAttributeValues={
                    ":until": {"N": repr(until)},
                    ":exp": {"N": str(int(until) + _TTL_AFTER_LEASE)},
                    ":id": {"S": lease.lease_id},
                },
            )
        except ClientError as e:
            if _condition_failed(e):
                return False
            raise StoreUnavailable(str(e)) from e
        lease.until = until
        return True

    def release(self, lease: Lease) -> None:
        """Give the slot back, if it is still ours. Never raises: a lease that could not be
        deleted runs out by itself."""
        if lease.released:
            return
        lease.released = True
        try:
            self._client.delete_item(
                TableName=self._table,
                Key={"bucket": {"S": lease.slot}},
                ConditionExpression="lease_id = :id",
                ExpressionAttributeValues={":id": {"S": lease.lease_id}},
            )
        except ClientError as e:
            if not _condition_failed(e):
                logger.warning("could not release a stream lease, it runs out by itself: %s", e)

    def _put(self, slot: str, owner: str, lease_id: str, now: float) -> float | None:
        """Take ``slot``: None if taken, else when its holder's lease runs out."""
        until = now + self.lease_seconds
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "bucket": {"S": slot},
                    "owner": {"S": owner},
                    "lease_id": {"S": lease_id},
                    "lease_until": {"N": repr(until)},
                    "expires_at": {"N": str(int(until) + _TTL_AFTER_LEASE)},
                },
                ConditionExpression="attribute_not_exists(#b) OR lease_until < :now",
                ExpressionAttributeNames={"#b": "bucket"},  # a reserved word
                ExpressionAttributeValues={":now": {"N": repr(now)}},
                # The holder's lease comes back with the refusal: no second read.
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            if not _condition_failed(e):
                raise StoreUnavailable(str(e)) from e
            held = e.response.get("Item", {}).get("lease_until", {}).get("N")  # type: ignore[attr-defined]
            # A store that does not return the holder: assume a lease just renewed.
            return float(held) if held is not None else now + self.lease_seconds
        return None


def _condition_failed(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class HeldLease:
    """A stream's lease while the stream is open: renewed from the stream's own loop when
    due, given back once when it closes. All DynamoDB calls run in worker threads."""

    def __init__(self, leases: StreamLeases, lease: Lease | None) -> None:
        self._leases = leases
        self.lease = lease
        self._due = leases.now() + leases.renew_every

    async def tick(self) -> None:
        """Renew the lease if it is due. A lease that ran out and was taken meanwhile (the
        environment stalled for the lease time) is taken again on a free slot if there is
        one; if there is none, the stream goes on (it is open already) and tries again at
        the next renewal. A store that does not answer is tried again then too."""
        if self.lease is None or self.lease.released or self._leases.now() < self._due:
            return
        self._due = self._leases.now() + self._leases.renew_every
        lease = self.lease
        try:
            if await anyio.to_thread.run_sync(self._leases.renew, lease):
                return
            logger.warning("a stream lease ran out and was taken; taking another")
            self.lease = await anyio.to_thread.run_sync(self._leases.acquire, lease.owner)
        except (StoreUnavailable, TooManyStreams) as e:
            logger.warning("stream lease not renewed: %s", e)

    async def release(self) -> None:
        """Give the slot back (idempotent); shielded, as the stream is often being torn
        down (cancelled) when this runs."""
        if self.lease is None or self.lease.released:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._leases.release, self.lease)
