"""Personal API keys: their form, the parsing of a bearer, and the verifier's answers (the
keys table as a dict here; tests/integration/test_api_keys.py runs it on the emulator)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from llmstream.api_keys import (
    KEY_ID_PATTERN,
    PREFIX_CHARS,
    ApiKeyVerifier,
    key_hash,
    key_id_of,
    new_key,
)
from llmstream.auth import Authenticator, Principal, build_authenticator
from llmstream.exceptions import AuthUnavailable, Unauthenticated
from llmstream.settings import Settings
from llmstream.tokens import StreamTokenVerifier
from tests.conftest import FUNCTION_ENV

pytestmark = pytest.mark.unit


class Table:
    """The keys table as GetItem and UpdateItem see it, with the calls made."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail: str | None = None  # an error code every call raises

    def add(self, key: str, owner: str = "sub-alice", username: str = "alice") -> str:
        key_id = key_id_of(key)
        assert key_id
        self.items[key_id] = {
            "key_id": {"S": key_id},
            "owner": {"S": owner},
            "username": {"S": username},
            "name": {"S": "laptop"},
            "prefix": {"S": key[:PREFIX_CHARS]},
            "key_hash": {"S": key_hash(key)},
            "created_at": {"N": "1000.0"},
        }
        return key_id

    def _maybe_fail(self, op: str) -> None:
        self.calls.append(op)
        if self.fail:
            raise ClientError({"Error": {"Code": self.fail, "Message": "no"}}, op)

    def get_item(self, **kw: Any) -> dict[str, Any]:
        self._maybe_fail("GetItem")
        assert kw["ConsistentRead"] is True  # a revoked key is refused at once
        item = self.items.get(kw["Key"]["key_id"]["S"])
        return {"Item": dict(item)} if item else {}

    def update_item(self, **kw: Any) -> dict[str, Any]:
        self._maybe_fail("UpdateItem")
        item = self.items.get(kw["Key"]["key_id"]["S"])
        if item is None:  # attribute_exists(key_id)
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "Update")
        last = item.get("last_used_at", {}).get("N")
        stale = float(kw["ExpressionAttributeValues"][":stale"]["N"])
        if last is not None and float(last) >= stale:
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "Update")
        item["last_used_at"] = kw["ExpressionAttributeValues"][":now"]
        return {}


class Clock:
    def __init__(self, now: float = 2000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(table: Table, clock: Clock | None = None) -> ApiKeyVerifier:
    return ApiKeyVerifier("keys", lambda: table, clock=clock or Clock())  # type: ignore[arg-type,return-value]


def test_a_new_key_has_its_id_a_256_bit_secret_and_a_short_prefix() -> None:
    key_id, key = new_key()
    assert re.fullmatch(KEY_ID_PATTERN, key_id)
    assert key.startswith(f"lls_{key_id}_")
    secret = key[len(f"lls_{key_id}_") :]
    assert len(secret) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", secret)
    assert key_id_of(key) == key_id
    assert key[:PREFIX_CHARS] == f"lls_{key_id[:8]}"
    assert len({new_key()[1] for _ in range(100)}) == 100


def test_only_a_hash_of_the_whole_key_is_kept() -> None:
    _, key = new_key()
    assert key_hash(key) == hashlib.sha256(key.encode()).hexdigest()
    assert key_hash(key) != key_hash(key[:-1] + ("A" if key[-1] != "A" else "B"))


@pytest.mark.parametrize(
    "bearer",
    [
        "lls_",
        "lls_abcdefghijkl",
        "lls_abcdefghijkl_",
        "lls_abcdefghijkl_short",
        "lls_ABCDEFGHIJKL_" + "x" * 43,  # the id is lowercase
        "lls_abcdefghij01_" + "x" * 43,  # 0 and 1 are not base32
        "lls_abcdefghijk_" + "x" * 43,  # 11 characters
        "lls_abcdefghijkl_" + "x" * 42 + "!",
        "lls_abcdefghijkl_" + "x" * 42 + "é",
        "lls_abcdefghijkl_" + "x" * 200,
        " lls_abcdefghijkl_" + "x" * 43,
        "lls_abcdefghijkl_" + "x" * 43 + "\n",
    ],
)
def test_a_malformed_key_is_refused_without_a_lookup_or_an_echo(bearer: str) -> None:
    table = Table()
    assert key_id_of(bearer) is None
    with pytest.raises(Unauthenticated) as refused:
        verifier(table).verify(bearer)
    # a fixed reason: nothing of the bearer in it
    assert str(refused.value) == "invalid API key: not of the form lls_<id>_<secret>"
    assert table.calls == []


def test_a_valid_key_is_its_owner_with_no_groups() -> None:
    table = Table()
    _, key = new_key()
    table.add(key, owner="sub-bob", username="bob")
    user = verifier(table).verify(key)
    assert user == Principal(sub="sub-bob", username="bob", groups=frozenset(), via="api_key")
    assert not user.member_of("admins")


def test_an_unknown_id_and_a_wrong_secret_get_the_same_answer_without_the_key() -> None:
    table = Table()
    _, key = new_key()
    table.add(key)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")  # the id, another secret
    _, unknown = new_key()
    reasons = set()
    for bearer in (forged, unknown):
        with pytest.raises(Unauthenticated) as refused:
            verifier(table).verify(bearer)
        reasons.add(str(refused.value))
        secret = bearer.split("_", 2)[2]
        assert secret not in str(refused.value) and bearer not in str(refused.value)
    assert reasons == {"invalid API key: unknown or revoked"}


def test_a_revoked_key_is_refused_on_the_next_verify() -> None:
    table = Table()
    _, key = new_key()
    key_id = table.add(key)
    check = verifier(table)
    assert check.verify(key).via == "api_key"
    del table.items[key_id]
    with pytest.raises(Unauthenticated):
        check.verify(key)


def test_last_used_is_written_at_most_once_a_minute() -> None:
    table, clock = Table(), Clock(5000.0)
    _, key = new_key()
    key_id = table.add(key)
    check = verifier(table, clock)
    check.verify(key)
    assert table.items[key_id]["last_used_at"] == {"N": "5000.0"}
    clock.now += 59
    check.verify(key)
    assert table.calls == ["GetItem", "UpdateItem", "GetItem"]  # no write within the minute
    clock.now += 2
    check.verify(key)
    assert table.items[key_id]["last_used_at"] == {"N": "5061.0"}


def test_a_failed_last_used_write_costs_the_key_nothing() -> None:
    table = Table()
    _, key = new_key()
    table.add(key)

    def refuse(**kw: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "AccessDeniedException"}}, "UpdateItem")

    table.update_item = refuse  # type: ignore[method-assign]
    assert verifier(table).verify(key).sub == "sub-alice"


def test_a_table_that_does_not_answer_is_503_not_401() -> None:
    table = Table()
    _, key = new_key()
    table.add(key)
    table.fail = "ProvisionedThroughputExceededException"
    with pytest.raises(AuthUnavailable) as unavailable:
        verifier(table).verify(key)
    assert key not in str(unavailable.value)


def test_each_verifier_takes_only_its_own_form() -> None:
    _, key = new_key()
    check = verifier(Table())
    assert check.accepts(key) and check.accepts("lls_anything")
    assert not check.accepts("a.b.c") and not check.accepts("123.sig")
    assert not StreamTokenVerifier("s" * 32, "t1", "o").accepts(key)


def test_the_authenticator_asks_the_key_verifier_only_where_the_table_is_set() -> None:
    table = Table()
    _, key = new_key()
    table.add(key)
    without = build_authenticator(Settings(**{k.lower(): v for k, v in FUNCTION_ENV.items()}))
    with pytest.raises(Unauthenticated, match="not a credential this service issues"):
        without.authenticate(f"Bearer {key}")
    settings = Settings(**{k.lower(): v for k, v in FUNCTION_ENV.items()}, api_keys_table="keys")
    with_keys: Authenticator = build_authenticator(settings, dynamodb=table)  # type: ignore[arg-type]
    assert with_keys.authenticate(f"Bearer {key}").via == "api_key"
    assert table.calls[0] == "GetItem"


def test_the_setting_defaults_to_no_keys_and_twenty_a_user() -> None:
    settings = Settings(**{k.lower(): v for k, v in FUNCTION_ENV.items()})
    assert settings.api_keys_table is None and settings.user_max_api_keys == 20
    with pytest.raises(ValidationError):
        Settings(**{k.lower(): v for k, v in FUNCTION_ENV.items()}, user_max_api_keys=0)


def test_the_stream_functions_start_imports_and_builds_nothing_for_keys() -> None:
    # Its cold start: the keys' module comes with the first request's authenticator, and
    # their client is the process's shared one, made when a key is first checked.
    code = (
        "import sys, llmstream.stream as s, llmstream.deps as d;"
        "assert 'llmstream.api_keys' not in sys.modules, 'imported';"
        "from llmstream.auth import get_authenticator;"
        "get_authenticator();"
        "assert d.get_deps.cache_info().currsize == 0, 'deps built'"
    )
    env = {**os.environ, **FUNCTION_ENV, "API_KEYS_TABLE": "keys", "AWS_DEFAULT_REGION": "x"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
