from __future__ import annotations

import pytest

from llmstream import tokens
from llmstream.exceptions import TaskNotFound, TokenExpired, TokenMissing

pytestmark = pytest.mark.unit
SECRET = "s" * 32
ALICE = "sub-alice"


def test_a_signed_token_opens_its_task_for_its_owner() -> None:
    token = tokens.sign(SECRET, "task1", ALICE, ttl_seconds=60)
    tokens.verify(SECRET, "task1", ALICE, token)  # no exception


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_refused(token: str | None) -> None:
    with pytest.raises(TokenMissing):
        tokens.verify(SECRET, "task1", ALICE, token)


def test_token_of_another_task_is_a_task_not_found() -> None:
    token = tokens.sign(SECRET, "task1", ALICE, ttl_seconds=60)
    with pytest.raises(TaskNotFound):
        tokens.verify(SECRET, "task2", ALICE, token)


def test_token_of_another_owner_is_a_task_not_found() -> None:
    # GIVEN a token Bob got for his own task, WHEN it is tried on Alice's task row (which
    # names Alice as the owner), THEN the task does not exist for him
    token = tokens.sign(SECRET, "task1", "sub-bob", ttl_seconds=60)
    with pytest.raises(TaskNotFound):
        tokens.verify(SECRET, "task1", ALICE, token)


def test_token_signed_with_another_secret_is_refused() -> None:
    token = tokens.sign("x" * 32, "task1", ALICE, ttl_seconds=60)
    with pytest.raises(TaskNotFound):
        tokens.verify(SECRET, "task1", ALICE, token)


def test_expired_token_is_told_apart_so_the_page_renews_it() -> None:
    token = tokens.sign(SECRET, "task1", ALICE, ttl_seconds=10, now=1000)
    tokens.verify(SECRET, "task1", ALICE, token, now=1005)
    with pytest.raises(TokenExpired, match="expired"):
        tokens.verify(SECRET, "task1", ALICE, token, now=1011)


@pytest.mark.parametrize("token", ["abc", "123", "123.", ".sig", "12x.sig"])
def test_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(TaskNotFound):
        tokens.verify(SECRET, "task1", ALICE, token)


def test_tampered_expiry_is_refused() -> None:
    expires, _, sig = tokens.sign(SECRET, "task1", ALICE, ttl_seconds=60).partition(".")
    with pytest.raises(TaskNotFound):
        tokens.verify(SECRET, "task1", ALICE, f"{int(expires) + 3600}.{sig}")


@pytest.mark.parametrize(
    "token",
    ["\u00b2.abc", "1796678361.\u00e9\u00e9", "1796678361.", ".abc", "12x.abc", "9" * 40 + ".abc"],
)
def test_a_malformed_token_is_a_task_not_found_never_a_crash(token: str) -> None:
    # GIVEN a token whose expiry is not ASCII digits ("²" passes str.isdigit()), or whose
    # signature has non-ASCII characters, or a part missing
    # WHEN it is tried, THEN the task does not exist for its bearer (404), never a 500
    with pytest.raises(TaskNotFound):
        tokens.verify(SECRET, "task1", ALICE, token)
