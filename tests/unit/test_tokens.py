from __future__ import annotations

import pytest

from llmstream import tokens
from llmstream.exceptions import TokenInvalid, TokenMissing

pytestmark = pytest.mark.unit
SECRET = "s" * 32


def test_a_signed_token_opens_its_task() -> None:
    token = tokens.sign(SECRET, "task1", ttl_seconds=60)
    tokens.verify(SECRET, "task1", token)  # no exception


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_refused(token: str | None) -> None:
    with pytest.raises(TokenMissing):
        tokens.verify(SECRET, "task1", token)


def test_token_of_another_task_is_refused() -> None:
    token = tokens.sign(SECRET, "task1", ttl_seconds=60)
    with pytest.raises(TokenInvalid, match="does not match"):
        tokens.verify(SECRET, "task2", token)


def test_token_signed_with_another_secret_is_refused() -> None:
    token = tokens.sign("x" * 32, "task1", ttl_seconds=60)
    with pytest.raises(TokenInvalid):
        tokens.verify(SECRET, "task1", token)


def test_expired_token_is_refused() -> None:
    token = tokens.sign(SECRET, "task1", ttl_seconds=10, now=1000)
    tokens.verify(SECRET, "task1", token, now=1005)
    with pytest.raises(TokenInvalid, match="expired"):
        tokens.verify(SECRET, "task1", token, now=1011)


@pytest.mark.parametrize("token", ["abc", "123", "123.", ".sig", "12x.sig"])
def test_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(TokenInvalid):
        tokens.verify(SECRET, "task1", token)


def test_tampered_expiry_is_refused() -> None:
    expires, _, sig = tokens.sign(SECRET, "task1", ttl_seconds=60).partition(".")
    with pytest.raises(TokenInvalid):
        tokens.verify(SECRET, "task1", f"{int(expires) + 3600}.{sig}")
