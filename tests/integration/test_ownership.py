"""Ownership in the stores: every read of a task or a conversation is its owner's."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmstream import chat
from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.exceptions import QuotaExceeded, SessionNotFound, StoreUnavailable, TaskNotFound
from llmstream.limits import TokenBuckets, UserQuotas
from llmstream.tasks import Task
from tests.integration.conftest import queued_task

pytestmark = pytest.mark.integration


def user(name: str) -> Principal:
    return Principal(sub=f"sub-{name}-{uuid.uuid4().hex[:8]}", username=name, groups=frozenset())


def task_of(deps: Deps, owner: Principal, session_id: str, message: str = "hi") -> Task:
    return queued_task(deps, session_id=session_id, message=message, owner=owner.sub)


def test_another_users_task_is_not_found(deps: Deps) -> None:
    # GIVEN a task of Alice's
    alice, bob = user("alice"), user("bob")
    task = task_of(deps, alice, uuid.uuid4().hex)
    # THEN Alice sees it; for Bob it does not exist, and his cancel changes nothing
    assert deps.tasks.owned_by(alice.sub).get(task.task_id).message == "hi"
    with pytest.raises(TaskNotFound):
        deps.tasks.owned_by(bob.sub).get(task.task_id)
    with pytest.raises(TaskNotFound):
        deps.tasks.owned_by(bob.sub).request_cancel(task.task_id)
    assert deps.tasks.get(task.task_id).cancel_requested is False


def test_a_conversation_is_only_its_owners(deps: Deps) -> None:
    # GIVEN a conversation of Alice's with one turn
    alice, bob = user("alice"), user("bob")
    sid = uuid.uuid4().hex
    deps.sessions.start(alice.sub, sid, "My secret bank PIN is 4321.", time.time())
    first = task_of(deps, alice, sid, "My secret bank PIN is 4321.")
    # THEN Bob can neither read it, continue it, list it nor delete it
    with pytest.raises(SessionNotFound):
        chat.session(deps, bob, sid)
    with pytest.raises(SessionNotFound):
        deps.sessions.touch(bob.sub, sid, time.time())
    with pytest.raises(SessionNotFound):
        chat.delete_session(deps, bob, sid)
    assert deps.tasks.session(bob.sub, sid) == []  # the index is keyed by owner too
    assert chat.sessions(deps, bob).sessions == []
    # AND Alice can
    assert [t.task_id for t in chat.session(deps, alice, sid).turns] == [first.task_id]
    [mine] = chat.sessions(deps, alice).sessions
    assert (mine.session_id, mine.title, mine.turns) == (sid, "My secret bank PIN is 4321.", 1)


def test_conversations_are_listed_most_recently_active_first(deps: Deps) -> None:
    alice = user("alice")
    older, newer = uuid.uuid4().hex, uuid.uuid4().hex
    deps.sessions.start(alice.sub, older, "older", 1000.0)
    deps.sessions.start(alice.sub, newer, "newer", 2000.0)
    deps.sessions.touch(alice.sub, older, 3000.0)  # a new turn in the older one
    listed = chat.sessions(deps, alice).sessions
    assert [s.session_id for s in listed] == [older, newer]
    assert listed[0].turns == 2


def test_deleting_a_conversation_removes_its_turns_and_answers(deps: Deps) -> None:
    # GIVEN a conversation of two turns, one finished with an answer in the chunk log
    alice = user("alice")
    sid = uuid.uuid4().hex
    deps.sessions.start(alice.sub, sid, "first", time.time())
    done, queued = task_of(deps, alice, sid, "first"), task_of(deps, alice, sid, "second")
    deps.log.append(done.task_id, 1, "chunk", {"chunk": "answer"})
    deps.log.append(done.task_id, 2, "done", {"type": "done"})
    # WHEN Alice deletes it
    chat.delete_session(deps, alice, sid)
    # THEN nothing of it is left
    with pytest.raises(SessionNotFound):
        chat.session(deps, alice, sid)
    for task in (done, queued):
        with pytest.raises(TaskNotFound):
            deps.tasks.owned_by(alice.sub).get(task.task_id)
        assert deps.log.read(task.task_id, 0, 10) == []
        # what is left is a tombstone without text, that no worker will run
        tombstone = deps.tasks.get(task.task_id)
        assert tombstone.deleted and tombstone.message == "" and tombstone.status == "cancelled"


def quotas(deps: Deps, rpm: int = 0, tokens_per_day: int = 0) -> UserQuotas:
    return UserQuotas(
        TokenBuckets(deps.settings.rate_limit_table, deps.dynamodb),
        deps.dynamodb,
        deps.settings.rate_limit_table,
        requests_per_minute=rpm,
        tokens_per_day=tokens_per_day,
    )


def test_concurrent_requests_take_exactly_the_users_minute(deps: Deps) -> None:
    # GIVEN 5 requests a minute per user, and 12 requests of one user at once
    q = quotas(deps, rpm=5)
    alice = user("alice")

    def admit(_: int) -> float | None:
        try:
            q.admit(alice.sub)
        except QuotaExceeded as e:
            return e.retry_after
        return None

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(admit, range(12)))
    # THEN exactly 5 are admitted, and the others are told how long to wait
    assert sum(o is None for o in outcomes) == 5
    assert all(o is not None and 0 < o <= 12 for o in outcomes if o is not None)
    # AND another user's minute is untouched
    q.admit(user("bob").sub)


def test_the_daily_token_quota_counts_what_answers_used(deps: Deps) -> None:
    # GIVEN 100 tokens a day, and an answer admitted for up to 70 that used 60
    q = quotas(deps, tokens_per_day=100)
    alice = user("alice")
    reserved = q.admit(alice.sub, 70)
    q.settle(alice.sub, reserved, 60, time.time())
    q.admit(alice.sub, 40)  # 60 of 100: one that may use 40 still fits
    # WHEN that one used 45 (more than its estimate)
    q.settle(alice.sub, 40, 45, time.time())
    # THEN the day counts 105, and the next request is refused until the day is over
    with pytest.raises(QuotaExceeded, match="105 of 100") as refused:
        q.admit(alice.sub)
    assert 0 < refused.value.retry_after <= 86400
    assert q.used_today(user("bob").sub) == 0


def long_conversation(deps: Deps, owner: Principal, turns: int = 60) -> tuple[str, list[Task]]:
    """A conversation whose turns fill more than one query page (DynamoDB stops a page at
    1 MB): each turn a 12,000-character question and a 12,000-character answer."""
    sid = uuid.uuid4().hex
    deps.sessions.start(owner.sub, sid, "long", time.time())
    tasks = [task_of(deps, owner, sid, f"{n} " + "q" * 12_000) for n in range(turns)]
    for task in tasks:
        attempt = deps.tasks.claim(task.task_id).attempt
        deps.tasks.finish(task.task_id, attempt, "done", answer="a" * 12_000, usage={})
        deps.log.append(task.task_id, 1, "chunk", {"chunk": "answer"})
    return sid, tasks


def assert_deleted_whole(deps: Deps, owner: Principal, sid: str, tasks: list[Task]) -> None:
    with pytest.raises(SessionNotFound):
        chat.session(deps, owner, sid)
    assert deps.tasks.session(owner.sub, sid, limit=1000) == []
    for task in tasks:
        with pytest.raises(TaskNotFound):
            deps.tasks.owned_by(owner.sub).get(task.task_id)
        assert deps.log.read(task.task_id, 0, 10) == []
        assert deps.tasks.get(task.task_id).message == ""


def test_a_conversation_of_60_long_turns_is_deleted_whole(deps: Deps) -> None:
    # GIVEN 60 long turns, more than one page of the session's index
    alice = user("alice")
    sid, tasks = long_conversation(deps, alice)
    assert len(deps.tasks.session(alice.sub, sid, limit=1000)) == 60  # (read page by page)
    # WHEN Alice deletes the conversation
    chat.delete_session(deps, alice, sid)
    # THEN no turn's text, answer or chunk log is left
    assert_deleted_whole(deps, alice, sid, tasks)


def test_a_delete_cut_short_is_finished_by_deleting_again(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a long conversation whose delete fails halfway (the chunk log store goes away)
    alice = user("alice")
    sid, tasks = long_conversation(deps, alice, turns=30)
    delete, calls = deps.log.delete, []

    def failing_delete(task_id: str) -> None:
        calls.append(task_id)
        if len(calls) == 15:
            raise StoreUnavailable("the chunk log went away")
        delete(task_id)

    monkeypatch.setattr(deps.log, "delete", failing_delete)
    with pytest.raises(StoreUnavailable):
        chat.delete_session(deps, alice, sid)
    # THEN the conversation is still listed, so it can be deleted again
    assert sid in [s.session_id for s in chat.sessions(deps, alice).sessions]
    # WHEN it is deleted again (the store is back)
    monkeypatch.setattr(deps.log, "delete", delete)
    chat.delete_session(deps, alice, sid)
    # THEN it is gone whole
    assert_deleted_whole(deps, alice, sid, tasks)
