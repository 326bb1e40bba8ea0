"""The worker's core against the emulator and the fake OpenAI (through the openai SDK)."""

from __future__ import annotations

import uuid

import pytest

from llmstream.answer import run_task
from llmstream.deps import Deps
from llmstream.models import Event
from llmstream.tasks import Task
from localcloud.fake_openai import Behaviour, expected_answer

pytestmark = pytest.mark.integration
FAKE = Behaviour(tokens=40)  # as the fake_openai_url fixture runs it


def submit(deps: Deps, message: str = "hello worker") -> Task:
    task = Task(
        task_id=uuid.uuid4().hex,
        session_id="s",
        status="queued",
        model="gpt-4o-mini",
        message=message,
    )
    deps.tasks.create(task)
    return task


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


def test_model_failure_ends_in_an_error_event(deps: Deps) -> None:
    task = submit(deps, "please fail [[fake status=500]]")
    run_task(deps, task.task_id)
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


def test_a_message_for_an_unknown_task_is_dropped(deps: Deps) -> None:
    run_task(deps, uuid.uuid4().hex)  # logs and returns; nothing to retry
