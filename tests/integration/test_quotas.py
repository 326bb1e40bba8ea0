"""The daily token quota reserves, then settles: on the emulator, with the fake model
(whose usage counts ~4 characters a token, as a real model's does)."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from llmstream import chat, reservations
from llmstream.admission import admit
from llmstream.answer import run_task
from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.embeddings import embed
from llmstream.exceptions import (
    Forbidden,
    InputTooLarge,
    ModelNotAllowed,
    ModelUnavailable,
    QuotaExceeded,
)
from llmstream.limits import TokenBuckets, UserQuotas
from llmstream.models import ChatRequest, EmbeddingsRequest
from llmstream.tasks import Task

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """The worker's process dying: no handler of the answer's catches it."""


def user(name: str, *groups: str) -> Principal:
    return Principal(
        sub=f"sub-{name}-{uuid.uuid4().hex[:8]}", username=name, groups=frozenset(groups)
    )


def with_quota(deps: Deps, tokens_per_day: int, **settings: Any) -> Deps:
    """``deps`` with a daily token quota (and any other settings changed)."""
    deps.settings = deps.settings.model_copy(
        update={"user_tokens_per_day": tokens_per_day, **settings}
    )
    deps.quotas = UserQuotas(
        TokenBuckets(deps.settings.rate_limit_table, deps.dynamodb),
        deps.dynamodb,
        deps.settings.rate_limit_table,
        requests_per_minute=0,
        tokens_per_day=tokens_per_day,
    )
    return deps


def accepted(deps: Deps, owner: Principal, message: str = "hello", max_tokens: int = 20) -> Task:
    """A chat request admitted (its tokens reserved) and stored, as POST /chat leaves it."""
    request = ChatRequest(message=message, max_tokens=max_tokens)
    task = admit(deps, deps.settings, owner, request)
    deps.tasks.create(task)
    return task


def test_concurrent_reservations_never_hold_more_than_the_quota(deps: Deps) -> None:
    # GIVEN a quota of 100 tokens a day, and 12 requests of one user at once that may
    # each use 30
    q = with_quota(deps, 100).quotas
    alice = user("alice")

    def reserve(_: int) -> bool:
        try:
            q.admit(alice.sub, 30)
        except QuotaExceeded:
            return False
        return True

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(reserve, range(12)))
    # THEN exactly the 3 that fit are admitted, and the day holds exactly what they reserved
    assert sum(outcomes) == 3
    assert q.used_today(alice.sub) == 90
    # AND settling gives back what a call did not use, which admits the next one
    q.settle(alice.sub, 30, 5, at=time.time())
    q.admit(alice.sub, 30)
    assert q.used_today(alice.sub) == 95


def test_a_request_over_the_quota_is_told_when_the_day_starts_again(deps: Deps) -> None:
    q = with_quota(deps, 100).quotas
    alice = user("alice")
    q.admit(alice.sub, 60)
    with pytest.raises(QuotaExceeded, match="60 of 100") as refused:
        q.admit(alice.sub, 41)
    assert 0 < refused.value.retry_after <= 86400
    with pytest.raises(QuotaExceeded, match="more than the daily token quota"):
        q.admit(user("bob").sub, 101)  # never fits: said so, whatever the day holds


def test_an_answer_settles_its_reservation_with_what_the_model_reported(deps: Deps) -> None:
    # GIVEN an admitted request that may use its prompt and 20 completion tokens
    with_quota(deps, 10_000)
    alice = user("alice")
    task = accepted(deps, alice, "count my tokens please")
    assert task.reserved and deps.quotas.used_today(alice.sub) == task.reserved
    # WHEN the worker answers it
    run_task(deps, task.task_id)
    # THEN the day counts what the model reported, not the estimate, and the row is settled
    row = deps.tasks.get(task.task_id)
    assert row.status == "done" and row.usage is not None
    assert deps.quotas.used_today(alice.sub) == row.usage["total_tokens"] < task.reserved
    assert row.reserved is None


@pytest.mark.parametrize("dies", ["after settling", "before settling"])
def test_a_worker_retry_after_a_crash_settles_once(
    deps: Deps, monkeypatch: pytest.MonkeyPatch, dies: str
) -> None:
    # GIVEN an admitted request whose first attempt dies once its done event is written:
    # after it settled the quota (before the row), or before it could settle
    with_quota(deps, 10_000)
    alice = user("alice")
    task = accepted(deps, alice)
    settle, finish = reservations.settle, deps.tasks.finish

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise Crash("the worker died")

    if dies == "after settling":
        monkeypatch.setattr(deps.tasks, "finish", crash)
    else:
        monkeypatch.setattr(reservations, "settle", crash)
    with pytest.raises(Crash):
        run_task(deps, task.task_id)
    monkeypatch.setattr(reservations, "settle", settle)
    monkeypatch.setattr(deps.tasks, "finish", finish)
    # WHEN its message comes back and a second attempt takes the task
    run_task(deps, task.task_id, receive_count=2)
    # THEN the task is done and its owner's day counts its usage once: no second
    # reservation, no second settlement
    row = deps.tasks.get(task.task_id)
    assert row.status == "done" and row.attempt == 2
    [done] = [e for e in deps.log.read_all(task.task_id) if e.kind == "done"]
    assert deps.quotas.used_today(alice.sub) == done.data["usage"]["total_tokens"]
    # AND settling it yet again changes nothing
    assert reservations.settle(deps, task, 10**6) is False
    assert deps.quotas.used_today(alice.sub) == done.data["usage"]["total_tokens"]


def test_a_cancelled_request_gives_its_reservation_back(deps: Deps) -> None:
    with_quota(deps, 10_000)
    alice = user("alice")
    task = accepted(deps, alice)
    # WHEN it is cancelled before a worker takes it
    assert chat.cancel(deps, alice, task.task_id).status == "cancelled"
    # THEN it holds nothing, and cancelling again gives nothing back twice
    assert deps.quotas.used_today(alice.sub) == 0
    chat.cancel(deps, alice, task.task_id)
    assert deps.quotas.used_today(alice.sub) == 0


def test_a_priority_above_the_default_is_for_the_priority_group(deps: Deps) -> None:
    request = ChatRequest(message="urgent", priority=9)
    with pytest.raises(Forbidden, match="admins"):
        admit(deps, deps.settings, user("dave"), request)
    assert admit(deps, deps.settings, user("ops", "admins"), request).priority == 9
    low = ChatRequest(message="whenever", priority=-9)
    assert admit(deps, deps.settings, user("dave"), low).priority == -9


def test_embeddings_reserve_their_inputs_and_charge_what_each_batch_used(deps: Deps) -> None:
    # GIVEN batches of 2 and a quota that fits 5 inputs of 40 characters (10 tokens each)
    with_quota(deps, 55, embeddings_batch_size=2)
    alice = user("alice")
    texts = ["a" * 40, "b" * 40, "c" * 40, "d" * 40, "e" * 40]
    answer = embed(deps, alice, EmbeddingsRequest(input=texts))
    # THEN the day counts what the model reported for the three batches
    assert answer.batches == 3 and answer.usage["total_tokens"] == 50
    assert deps.quotas.used_today(alice.sub) == 50
    # AND a request that does not fit what is left is refused before any model call
    with pytest.raises(QuotaExceeded):
        embed(deps, alice, EmbeddingsRequest(input=["f" * 40]))
    assert deps.quotas.used_today(alice.sub) == 50


def test_an_embeddings_batch_that_fails_midway_is_charged_the_batches_sent(deps: Deps) -> None:
    # GIVEN batches of 2, the second of which the model fails
    with_quota(deps, 10_000, embeddings_batch_size=2)
    alice = user("alice")
    texts = ["a" * 40, "b" * 40, "c" * 40, "boom [[fake status=500]]", "e" * 40]
    # WHEN they are embedded
    with pytest.raises(ModelUnavailable, match="500"):
        embed(deps, alice, EmbeddingsRequest(input=texts))
    # THEN the first batch (20 tokens) is charged; the failed and the unsent ones are not
    assert deps.quotas.used_today(alice.sub) == 20


def test_embeddings_are_capped_and_their_model_checked(deps: Deps) -> None:
    with_quota(deps, 10**9, embeddings_max_inputs=3, embeddings_max_chars=100)
    alice = user("alice")
    with pytest.raises(InputTooLarge, match="at most 3"):
        embed(deps, alice, EmbeddingsRequest(input=["a"] * 4))
    with pytest.raises(InputTooLarge, match="at most 100"):
        embed(deps, alice, EmbeddingsRequest(input=["a" * 60, "b" * 41]))
    with pytest.raises(ModelNotAllowed, match="text-embedding-3-small"):
        embed(deps, alice, EmbeddingsRequest(input=["a"], model="text-embedding-3-large"))
    assert deps.quotas.used_today(alice.sub) == 0  # nothing reserved for a refused request
