"""Personal API keys: the keys table, and the key as a credential (a Verifier, auth.py).

A key is ``lls_<key_id>_<secret>``: ``key_id`` (12 lowercase base32 characters) names its
row, ``secret`` is 256 random bits (``secrets.token_urlsafe(32)``, 43 characters). The
table keeps only the SHA-256 of the whole key: a fast hash is right here, because a key is
not a password (nothing to guess: 2^256 candidates), so a slow hash would only slow every
request down. The key itself is shown once, when it is created, and never logged.

A key is its owner calling (``Principal.via == "api_key"``) with no groups: it reaches what
its user owns, never an operator route (the admins group) nor a priority above 0 (the
PriorityGroup). It cannot create, list or revoke keys (the api's routes ask for a sign-in).

Every verify reads the key's row (GetItem, ConsistentRead): a revoked key is refused on the
very next request, and there is no cache to go stale. ``last_used_at`` is written at most
once a minute per key, with a conditional update whose failure changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from llmstream.auth import Principal
from llmstream.exceptions import (
    ApiKeyNotFound,
    AuthUnavailable,
    StoreUnavailable,
    TooManyApiKeys,
    Unauthenticated,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

KEY_PREFIX = "lls_"
KEY_ID_PATTERN = r"^[a-z2-7]{12}$"  # the id of a key: its row, and DELETE /keys/{key_id}
_KEY = re.compile(r"lls_([a-z2-7]{12})_([A-Za-z0-9_-]{32,128})")
PREFIX_CHARS = 12  # what a user sees of a key in the list: "lls_" and 8 of its id
OWNER_INDEX = "by-owner"  # GlobalSecondaryIndexes in template.yaml: owner, created_at
TOUCH_SECONDS = 60  # last_used_at is written at most this often per key
NAME_MAX_CHARS = 64
_REFUSED = "invalid API key: unknown or revoked"


@dataclass(frozen=True)
class ApiKey:
    """A key as its owner sees it in the list: never its secret, nor its hash."""

    key_id: str
    owner: str
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None = None


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: the one time its whole value (``secret``) is known."""

    key: ApiKey
    secret: str


def new_key() -> tuple[str, str]:
    """A fresh key id and the whole key."""
    key_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(bearer: str) -> str | None:
    """The key id of a bearer in the keys' form, else None."""
    match = _KEY.fullmatch(bearer)
    return match.group(1) if match else None


def key_hash(key: str) -> str:
    """What the table keeps of a key (hex SHA-256 of all of it; see the module's note)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """A user's keys (the api function): create one, list them, revoke one. Every call is
    by the owner's ``sub``; another user's key id is answered as one that does not exist."""

    def __init__(self, table: str, client: DynamoDBClient, max_keys: int) -> None:
        self._table = table
        self._client = client
        self._max_keys = max_keys

    def create(self, owner: str, username: str, name: str, now: float | None = None) -> NewApiKey:
        """A new key of ``owner``, or TooManyApiKeys when they have ``max_keys`` already.
        The count comes from the index, so two creates at the same instant may both pass
        it: the cap bounds how many keys pile up, it does not ration them."""
        if self.count(owner) >= self._max_keys:
            raise TooManyApiKeys(
                f"you have {self._max_keys} API keys, the most allowed: revoke one first"
            )
        created = time.time() if now is None else now
        for _ in range(3):  # 60-bit ids: a collision is all but impossible, never silent
            key_id, secret = new_key()
            item = {
                "key_id": {"S": key_id},
                "owner": {"S": owner},
                "username": {"S": username},
                "name": {"S": name},
                "prefix": {"S": secret[:PREFIX_CHARS]},
                "key_hash": {"S": key_hash(secret)},
                "created_at": {"N": repr(created)},
            }
            try:
                self._client.put_item(
                    TableName=self._table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(key_id)",
                )
            except ClientError as e:
                if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                    continue
                raise StoreUnavailable(str(e)) from e
            except BotoCoreError as e:
                raise StoreUnavailable(str(e)) from e
            return NewApiKey(key=_api_key(item), secret=secret)
        raise StoreUnavailable("no free key id after 3 tries")

    def count(self, owner: str) -> int:
        return sum(int(page.get("Count", 0)) for page in self._pages(owner, Select="COUNT"))

    def list(self, owner: str) -> list[ApiKey]:
        """``owner``'s keys, newest first. From the index: a key created or revoked a moment
        ago may be missing from it, or still in it, for about a second."""
        keys: list[ApiKey] = []
        for page in self._pages(owner, ScanIndexForward=False):
            keys.extend(_api_key(item) for item in page.get("Items", []))
        return keys

    def revoke(self, owner: str, key_id: str) -> None:
        """Delete ``owner``'s key at once (the next verify finds no row); ApiKeyNotFound if
        there is none of that id, or it is another user's."""
        try:
            self._client.delete_item(
                TableName=self._table,
                Key={"key_id": {"S": key_id}},
                ConditionExpression="#o = :o",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":o": {"S": owner}},
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ApiKeyNotFound(key_id) from e
            raise StoreUnavailable(str(e)) from e
        except BotoCoreError as e:
            raise StoreUnavailable(str(e)) from e

    def _pages(self, owner: str, **options: Any) -> Iterator[dict[str, Any]]:
        """Every page of ``owner``'s keys in the index (a user has a few: one page)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": OWNER_INDEX,
            "KeyConditionExpression": "#o = :o",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": {":o": {"S": owner}},
            **options,
        }
        while True:
            try:
                page: dict[str, Any] = dict(self._client.query(**request))
            except (ClientError, BotoCoreError) as e:
                raise StoreUnavailable(str(e)) from e
            yield page
            if not page.get("LastEvaluatedKey"):
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class ApiKeyVerifier:
    """Personal API keys as a credential (auth.Verifier): ``Authorization: Bearer lls_...``.

    ``dynamodb`` hands over the client on first use (the process's shared one), so building
    the authenticator costs a cold start nothing."""

    def __init__(
        self,
        table: str,
        dynamodb: Callable[[], DynamoDBClient],
        *,
        touch_seconds: float = TOUCH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._dynamodb = dynamodb
        self._touch_seconds = touch_seconds
        self._clock = clock

    def accepts(self, bearer: str) -> bool:
        return bearer.startswith(KEY_PREFIX)

    def verify(self, bearer: str) -> Principal:
        """The key's owner, or Unauthenticated (401). No reason repeats the key, and an
        unknown id and a wrong secret get the same answer."""
        key_id = key_id_of(bearer)
        if key_id is None:
            raise Unauthenticated("invalid API key: not of the form lls_<id>_<secret>")
        client = self._dynamodb()
        try:
            got = client.get_item(
                TableName=self._table, Key={"key_id": {"S": key_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as e:
            raise AuthUnavailable(f"API keys could not be checked: {type(e).__name__}") from e
        item = got.get("Item")
        stored = item.get("key_hash", {}).get("S", "") if item else ""
        # As bytes: compare_digest takes any bytes, and str only when it is ASCII.
        if not item or not hmac.compare_digest(stored.encode(), key_hash(bearer).encode()):
            raise Unauthenticated(_REFUSED)
        key = _api_key(item)
        self._touch(client, key)
        return Principal(
            sub=key.owner,
            username=item.get("username", {}).get("S", ""),
            groups=frozenset(),  # a key is never an operator, nor high priority
            via="api_key",
        )

    def _touch(self, client: DynamoDBClient, key: ApiKey) -> None:
        """``last_used_at`` = now, if it is older than ``touch_seconds`` (at most one write
        a minute, the condition settling a race). Only that attribute: the stream
        function's permission names nothing else. A failure costs the key nothing."""
        now = self._clock()
        if key.last_used_at is not None and now - key.last_used_at < self._touch_seconds:
            return
        try:
            client.update_item(
                TableName=self._table,
                Key={"key_id": {"S": key.key_id}},
                UpdateExpression="SET last_used_at = :now",
                ConditionExpression=(
                    "attribute_exists(key_id) AND "
                    "(attribute_not_exists(last_used_at) OR last_used_at < :stale)"
                ),
                ExpressionAttributeValues={
                    ":now": {"N": repr(now)},
                    ":stale": {"N": repr(now - self._touch_seconds)},
                },
            )
        except (ClientError, BotoCoreError) as e:
            code = e.response["Error"]["Code"] if isinstance(e, ClientError) else ""
            if code != "ConditionalCheckFailedException":
                logger.warning("last_used_at of API key %s not written: %s", key.key_id, e)


def _api_key(item: dict[str, Any]) -> ApiKey:
    last_used = item.get("last_used_at", {}).get("N")
    return ApiKey(
        key_id=item["key_id"]["S"],
        owner=item["owner"]["S"],
        name=item.get("name", {}).get("S", ""),
        prefix=item.get("prefix", {}).get("S", ""),
        created_at=float(item["created_at"]["N"]),
        last_used_at=float(last_used) if last_used is not None else None,
    )
