"""The worker's core against the emulator and the fake OpenAI (through the openai SDK)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from llmstream.answer import run_task
from llmstream.auth import Principal
from llmstream.chunklog.base import ChunkLog
from llmstream.deps import Deps
from llmstream.exceptions import RequestUnusable as Poison
from llmstream.exceptions import RetryLater, StoreUnavailable
from llmstream.models import Event, EventKind
from llmstream.tasks import Task
from localcloud.fake_openai import Behaviour, expected_answer
from tests.integration.conftest import queued_task

pytestmark = pytest.mark.integration
FAKE = Behaviour(tokens=40)  # as the fake_openai_url fixture runs it
USER = Principal(sub="sub-worker-tests", username="worker-tests", groups=frozenset())


def submit(deps: Deps, message: str = "hello worker", session_id: str | None = None) -> Task:
    return queued_task(
        deps, session_id=session_id, model="gpt-4o-mini", message=message, owner=USER.sub
    )


def text_of(events: list[Event]) -> str:
    return "".join(e.data["chunk"] for e in events if e.kind == "chunk")


def test_answer_is_streamed_into_the_log_and_the_task_is_done(deps: Deps) -> None:
    # GIVEN a queued task
    task = submit(deps)
    # WHEN the worker runs it
    run_task(deps, task.task_id)
    # THEN the log holds the model's exact answer, then one done event with usage
    events = deps.log.read_all(task.task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert text_of(events) == expected_answer(
        [{"role": "user", "content": task.message}], behaviour=FAKE
    )
    assert events[0].data == {"chunk": "You"}  # the first token is written on its own
    assert [e.kind for e in events].count("done") == 1 and events[-1].kind == "done"
    assert events[-1].data["usage"]["completion_tokens"] == 40
    assert len(events) < 40  # coalesced: fewer writes than tokens
    row = deps.tasks.get(task.task_id)
    assert row.status == "done" and row.attempt == 1
    assert row.usage is not None and row.usage["completion_tokens"] == 40
    assert row.started_at is not None and row.first_token_at is not None
    assert row.started_at <= row.first_token_at <= (row.finished_at or 0)


def test_model_failure_on_the_last_delivery_ends_in_an_error_event(deps: Deps) -> None:
    task = submit(deps, "please fail [[fake status=500]]")
    run_task(deps, task.task_id, receive_count=deps.settings.max_receive_count)
    events = deps.log.read_all(task.task_id)
    assert [e.kind for e in events] == ["error"]
    assert "500" in events[0].data["message"]
    row = deps.tasks.get(task.task_id)
    assert row.status == "error" and row.error and "500" in row.error


def test_retry_after_a_crash_resets_and_finishes_without_gaps_or_repeats(deps: Deps) -> None:
    # GIVEN an attempt that claimed the task, wrote part of an answer, then died
    task = submit(deps)
    deps.tasks.claim(task.task_id)
    deps.log.append(task.task_id, 1, "chunk", {"chunk": "You"})
    deps.log.append(task.task_id, 2, "chunk", {"chunk": " asked"})
    # WHEN SQS redelivers the message and the worker runs again
    run_task(deps, task.task_id)
    # THEN the log goes on after seq 2 with a reset, then the whole answer, then done
    events = deps.log.read_all(task.task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[2] == Event(3, "reset", {"type": "reset", "attempt": 2})
    assert text_of(events[3:]) == expected_answer(
        [{"role": "user", "content": task.message}], behaviour=FAKE
    )
    assert events[-1].kind == "done"
    assert deps.tasks.get(task.task_id).attempt == 2


def test_redelivery_of_a_finished_task_does_nothing(deps: Deps) -> None:
    task = submit(deps)
    run_task(deps, task.task_id)
    before = deps.log.read_all(task.task_id)
    run_task(deps, task.task_id)
    assert deps.log.read_all(task.task_id) == before


def test_crash_after_the_terminal_event_settles_the_status(deps: Deps) -> None:
    # GIVEN an attempt that wrote its done event but died before updating the row
    task = submit(deps)
    deps.tasks.claim(task.task_id)
    deps.log.append(task.task_id, 1, "chunk", {"chunk": "all"})
    deps.log.append(task.task_id, 2, "done", {"type": "done", "usage": {"total_tokens": 1}})
    # WHEN it is redelivered
    run_task(deps, task.task_id)
    # THEN the model is not called again and the row says done
    assert len(deps.log.read_all(task.task_id)) == 2
    assert deps.tasks.get(task.task_id).status == "done"


def test_a_message_for_an_unknown_task_is_poison(deps: Deps) -> None:
    # Retrying cannot help: the handler sends it to the DLQ at once (tests/e2e/test_crash.py)
    with pytest.raises(Poison, match="has no request row"):
        run_task(deps, uuid.uuid4().hex)


def deps_with(deps: Deps, **settings: object) -> Deps:
    from llmstream.deps import build_deps

    return build_deps(
        deps.settings.model_copy(update=settings),
        dynamodb=deps.dynamodb,
        sqs=deps.sqs,
        openai=deps.openai,
    )


def test_cancel_stops_a_running_answer_within_a_second(deps: Deps) -> None:
    # GIVEN a slow answer (10 s at 20 tokens/s) being streamed by a worker
    task = submit(deps, "long one [[fake tokens=200 tps=20 ttft_ms=0]]")
    worker = threading.Thread(target=run_task, args=(deps, task.task_id))
    worker.start()
    deadline = time.monotonic() + 10
    while not deps.log.read(task.task_id, 0, 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    # WHEN it is cancelled
    asked = time.monotonic()
    deps.tasks.request_cancel(task.task_id, USER.sub)
    worker.join(timeout=10)
    # THEN the worker stops soon after, and the log ends with one cancelled event
    stopped_after = time.monotonic() - asked
    assert not worker.is_alive()
    assert stopped_after < 3, stopped_after  # generous: the check runs every 0.5 s
    events = deps.log.read_all(task.task_id)
    assert events[-1].kind == "cancelled"
    assert [e.kind for e in events].count("cancelled") == 1
    full = expected_answer(
        [{"role": "user", "content": task.message}], behaviour=Behaviour(tokens=200)
    )
    assert full.startswith(text_of(events)) and len(text_of(events)) < len(full)
    assert deps.tasks.get(task.task_id).status == "cancelled"


def test_a_task_cancelled_before_its_worker_starts_never_calls_the_model(deps: Deps) -> None:
    task = submit(deps)
    deps.tasks.request_cancel(task.task_id, USER.sub)
    run_task(deps, task.task_id)
    assert [e.kind for e in deps.log.read_all(task.task_id)] == ["cancelled"]
    assert deps.tasks.get(task.task_id).status == "cancelled"


def test_cancel_of_a_queued_task_ends_it_at_once_and_twice_is_fine(deps: Deps) -> None:
    from llmstream.chat import cancel

    task = submit(deps)
    first = cancel(deps, USER, task.task_id)
    second = cancel(deps, USER, task.task_id)
    assert (first.status, second.status) == ("cancelled", "cancelled")
    assert [e.kind for e in deps.log.read_all(task.task_id)] == ["cancelled"]
    run_task(deps, task.task_id)  # the message arrives later: nothing happens
    assert len(deps.log.read_all(task.task_id)) == 1


def test_answer_timeout_ends_in_an_error_event(deps: Deps) -> None:
    task = submit(deps, "slow [[fake tokens=100 tps=10 ttft_ms=0]]")
    run_task(deps_with(deps, answer_timeout_seconds=0.6), task.task_id)
    events = deps.log.read_all(task.task_id)
    assert events[-1].kind == "error" and "timeout" in events[-1].data["message"]
    assert deps.tasks.get(task.task_id).status == "error"


def test_the_answer_ends_before_lambda_would_stop_the_worker(deps: Deps) -> None:
    # GIVEN an invocation with 1.5 s left and a 1 s safety margin
    task = submit(deps, "slow [[fake tokens=100 tps=10 ttft_ms=0]]")
    started = time.monotonic()
    run_task(
        deps_with(deps, lambda_margin_seconds=1.0),
        task.task_id,
        remaining_seconds=lambda: 1.5 - (time.monotonic() - started),
    )
    # THEN it ended with a clean terminal event inside the invocation's time
    assert time.monotonic() - started < 1.5 + 0.6
    assert deps.log.read_all(task.task_id)[-1].kind == "error"


def test_an_invocation_whose_start_took_its_time_goes_back_to_the_queue(deps: Deps) -> None:
    # GIVEN an invocation whose cold start left less than the safety margin (sam local's
    # container start counts against the function's Timeout)
    task = submit(deps, "late [[fake tokens=5]]")
    late = deps_with(deps, lambda_margin_seconds=5.0)
    # WHEN it runs the task: THEN it asks nothing of the model and hands the message back
    with pytest.raises(RetryLater) as retry:
        run_task(late, task.task_id, receive_count=1, remaining_seconds=lambda: 4.0)
    assert retry.value.delay == 2.0
    row = deps.tasks.get(task.task_id)
    assert row.status == "waiting" and "no time left" in (row.error or "")
    assert deps.log.read_all(task.task_id) == []
    # AND the next attempt, with a whole invocation, answers
    run_task(late, task.task_id, receive_count=2, remaining_seconds=lambda: 60.0)
    assert deps.log.read_all(task.task_id)[-1].kind == "done"
    # AND the last delivery allowed with no time left ends a task in an error event
    other = submit(deps, "late again [[fake tokens=5]]")
    run_task(late, other.task_id, receive_count=3, remaining_seconds=lambda: 4.0)
    assert [e.kind for e in deps.log.read_all(other.task_id)] == ["error"]
    assert deps.tasks.get(other.task_id).status == "error"


def test_transient_model_failure_goes_back_to_the_queue_then_errors(deps: Deps) -> None:
    task = submit(deps, "overloaded [[fake status=503]]")
    # WHEN the first deliveries fail with a 503 (after the SDK's own retries)
    for receive_count, delay in ((1, 2.0), (2, 4.0)):
        with pytest.raises(RetryLater) as retry:
            run_task(deps, task.task_id, receive_count=receive_count)
        # THEN the message is to be redelivered with exponential backoff, status waiting
        assert retry.value.delay == delay
        row = deps.tasks.get(task.task_id)
        assert row.status == "waiting" and row.retry_at and "503" in (row.error or "")
    assert deps.log.read_all(task.task_id) == []  # nothing for the viewer yet
    # AND the last delivery allowed ends the task with an error event
    run_task(deps, task.task_id, receive_count=3)
    events = deps.log.read_all(task.task_id)
    assert [e.kind for e in events] == ["error"] and "503" in events[0].data["message"]
    assert deps.tasks.get(task.task_id).status == "error"


def test_a_client_error_is_not_retried(deps: Deps) -> None:
    task = submit(deps, "bad request [[fake status=400]]")
    run_task(deps, task.task_id, receive_count=1)
    assert [e.kind for e in deps.log.read_all(task.task_id)] == ["error"]


def test_a_session_sends_its_history_to_the_model(deps: Deps) -> None:
    from llmstream.chat import session

    # GIVEN a finished first turn in a session
    sid = uuid.uuid4().hex
    deps.sessions.start(USER.sub, sid, "my name is Ada", time.time())
    first = submit(deps, "my name is Ada", session_id=sid)
    run_task(deps, first.task_id)
    answer1 = expected_answer([{"role": "user", "content": first.message}], behaviour=FAKE)
    # WHEN the second turn runs
    second = submit(deps, "what is my name?", session_id=sid)
    run_task(deps, second.task_id)
    # THEN the model saw the first turn: its answer is the one for the whole conversation
    conversation = [
        {"role": "user", "content": first.message},
        {"role": "assistant", "content": answer1},
        {"role": "user", "content": second.message},
    ]
    events = deps.log.read_all(second.task_id)
    assert text_of(events) == expected_answer(conversation, behaviour=FAKE)
    # AND the session lists both turns, oldest first, with their answers
    history = session(deps, USER, sid)
    assert [t.task_id for t in history.turns] == [first.task_id, second.task_id]
    assert history.turns[0].answer == answer1
    assert all(t.status == "done" for t in history.turns)


def test_history_is_bounded_by_the_token_budget(deps: Deps) -> None:
    sid = uuid.uuid4().hex
    first = submit(deps, "an early turn", session_id=sid)
    run_task(deps, first.task_id)
    second = submit(deps, "a later turn", session_id=sid)
    # A budget too small for the first turn (~40 tokens of text): only the new message goes.
    run_task(deps_with(deps, history_token_budget=10), second.task_id)
    events = deps.log.read_all(second.task_id)
    assert text_of(events) == expected_answer(
        [{"role": "user", "content": second.message}], behaviour=FAKE
    )


class FlakyLog(ChunkLog):
    """The real chunk log, except that appends fail (StoreUnavailable) from the nth on."""

    def __init__(self, log: ChunkLog, fail_from: int) -> None:
        self.log, self.fail_from, self.appends = log, fail_from, 0

    def append(self, task_id: str, seq: int, kind: EventKind, data: dict[str, Any]) -> None:
        self.appends += 1
        if self.appends >= self.fail_from:
            raise StoreUnavailable("connection refused")
        self.log.append(task_id, seq, kind, data)

    def read(self, task_id: str, after: int, limit: int) -> list[Event]:
        return self.log.read(task_id, after, limit)

    def last(self, task_id: str) -> Event | None:
        return self.log.last(task_id)

    def delete(self, task_id: str) -> None:
        self.log.delete(task_id)

    def ping(self) -> str:
        return self.log.ping()


def test_a_chunk_log_outage_goes_back_to_the_queue_and_the_next_attempt_finishes(
    deps: Deps,
) -> None:
    task = submit(deps, "outage [[fake tokens=40 tps=200]]")
    real = deps.log
    # GIVEN a chunk log that stops answering after two writes of the answer
    deps.log = FlakyLog(real, fail_from=3)
    # WHEN the worker runs: THEN the message goes back to the queue with the backoff
    with pytest.raises(RetryLater) as retry:
        run_task(deps, task.task_id, receive_count=1)
    assert retry.value.delay == 2.0 and "store unavailable" in str(retry.value)
    assert [e.seq for e in real.read_all(task.task_id)] == [1, 2]
    # AND when the store is back, the redelivery resets and finishes the answer
    deps.log = real
    run_task(deps, task.task_id, receive_count=2)
    events = real.read_all(task.task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[2].kind == "reset" and events[-1].kind == "done"
    assert deps.tasks.get(task.task_id).status == "done"


def test_a_chunk_log_outage_on_the_last_delivery_is_left_to_the_dead_letter_queue(
    deps: Deps,
) -> None:
    task = submit(deps)
    deps.log = FlakyLog(deps.log, fail_from=1)
    # The error event cannot be written either: the message fails, and SQS moves it to the DLQ
    with pytest.raises(StoreUnavailable):
        run_task(deps, task.task_id, receive_count=3)
