"""Personal API keys in the template's keys table on the emulator, over HTTP: create, list,
revoke, the per-user cap, last use, and the verifier's answer right after a revoke."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from llmstream.api_keys import ApiKey, ApiKeyStore, ApiKeyVerifier, key_hash
from llmstream.exceptions import ApiKeyNotFound, TooManyApiKeys, Unauthenticated
from localcloud.template import LocalTemplate

pytestmark = pytest.mark.integration
CAP = 3


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(stack: LocalTemplate) -> str:
    return stack.physical_name("ApiKeysTable")


@pytest.fixture
def store(table: str, clients: dict[str, Any]) -> ApiKeyStore:
    return ApiKeyStore(table, clients["dynamodb"], max_keys=CAP)


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
def verifier(table: str, clients: dict[str, Any], clock: Clock) -> ApiKeyVerifier:
    return ApiKeyVerifier(table, lambda: clients["dynamodb"], clock=clock)


def owner() -> str:
    return f"sub-{uuid.uuid4().hex[:12]}"


def test_a_created_key_is_listed_newest_first_and_stored_only_as_its_hash(
    store: ApiKeyStore, table: str, clients: dict[str, Any]
) -> None:
    alice = owner()
    first = store.create(alice, "alice", "laptop", now=100.0)
    second = store.create(alice, "alice", "ci", now=200.0)
    listed = store.list(alice)
    assert [k.key_id for k in listed] == [second.key.key_id, first.key.key_id]
    assert listed[1] == first.key
    assert (listed[1].name, listed[1].prefix, listed[1].created_at) == (
        "laptop",
        first.secret[:12],
        100.0,
    )
    assert listed[1].last_used_at is None
    # The row holds the hash of the key, never the key or its secret
    item = clients["dynamodb"].get_item(
        TableName=table, Key={"key_id": {"S": first.key.key_id}}, ConsistentRead=True
    )["Item"]
    assert item["key_hash"]["S"] == key_hash(first.secret)
    assert item["username"]["S"] == "alice"
    secret = first.secret.split("_", 2)[2]
    assert not any(secret in str(value) for value in item.values())
    assert store.list(owner()) == []


def test_a_user_has_at_most_the_cap_and_a_revoke_makes_room(store: ApiKeyStore) -> None:
    alice, bob = owner(), owner()
    made = [store.create(alice, "alice", f"key {n}") for n in range(CAP)]
    with pytest.raises(TooManyApiKeys, match=f"{CAP} API keys"):
        store.create(alice, "alice", "one more")
    assert store.count(alice) == CAP
    store.create(bob, "bob", "bob's own")  # the cap is each user's
    store.revoke(alice, made[0].key.key_id)
    store.create(alice, "alice", "in its place")
    assert store.count(alice) == CAP


def test_another_users_key_cannot_be_revoked_and_goes_on_working(
    store: ApiKeyStore, verifier: ApiKeyVerifier
) -> None:
    alice, mallory = owner(), owner()
    key = store.create(alice, "alice", "laptop")
    with pytest.raises(ApiKeyNotFound):
        store.revoke(mallory, key.key.key_id)
    with pytest.raises(ApiKeyNotFound):
        store.revoke(alice, "aaaaaaaaaaaa")  # no such key
    assert verifier.verify(key.secret).sub == alice
    assert store.list(mallory) == []


def test_a_revoked_key_is_refused_on_the_very_next_verify(
    store: ApiKeyStore, verifier: ApiKeyVerifier
) -> None:
    alice = owner()
    key = store.create(alice, "alice", "laptop")
    user = verifier.verify(key.secret)
    assert (user.sub, user.username, user.groups, user.via) == (
        alice,
        "alice",
        frozenset(),
        "api_key",
    )
    store.revoke(alice, key.key.key_id)
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        verifier.verify(key.secret)
    with pytest.raises(ApiKeyNotFound):
        store.revoke(alice, key.key.key_id)  # once


def test_a_wrong_secret_of_a_real_key_id_is_refused(
    store: ApiKeyStore, verifier: ApiKeyVerifier
) -> None:
    key = store.create(owner(), "alice", "laptop").secret
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        verifier.verify(forged)


def test_last_use_is_recorded_at_most_once_a_minute(
    store: ApiKeyStore, verifier: ApiKeyVerifier, clock: Clock
) -> None:
    alice = owner()
    key = store.create(alice, "alice", "laptop")
    verifier.verify(key.secret)
    [listed] = store.list(alice)
    assert listed.last_used_at == clock.now
    first_use = clock.now
    clock.now += 30
    verifier.verify(key.secret)
    assert store.list(alice)[0].last_used_at == first_use  # within the minute: no write
    clock.now += 31
    verifier.verify(key.secret)
    assert store.list(alice)[0].last_used_at == clock.now


def test_a_last_use_after_a_revoke_does_not_bring_the_row_back(
    store: ApiKeyStore, table: str, clients: dict[str, Any], verifier: ApiKeyVerifier
) -> None:
    # The write's condition (the row exists): an UpdateItem would otherwise create one.
    alice = owner()
    key = store.create(alice, "alice", "laptop")
    store.revoke(alice, key.key.key_id)
    gone = ApiKey(key.key.key_id, alice, "laptop", key.key.prefix, 1.0, None)
    verifier._touch(clients["dynamodb"], gone)
    got = clients["dynamodb"].get_item(
        TableName=table, Key={"key_id": {"S": key.key.key_id}}, ConsistentRead=True
    )
    assert "Item" not in got
