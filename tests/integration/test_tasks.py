from __future__ import annotations

import uuid

import pytest

from llmstream.deps import Deps
from llmstream.exceptions import ClaimLost, TaskAlreadyFinal, TaskNotFound
from llmstream.tasks import Task
from tests.integration.conftest import queued_task

pytestmark = pytest.mark.integration


def new_task(deps: Deps) -> Task:
    return queued_task(deps, session_id="s", owner="sub-tasks-tests", temperature=0.5)


def test_round_trip(deps: Deps) -> None:
    task = new_task(deps)
    got = deps.tasks.get(task.task_id)
    assert got == task


def test_claim_moves_to_running_and_counts_attempts(deps: Deps) -> None:
    task = new_task(deps)
    assert deps.tasks.claim(task.task_id).attempt == 1
    # A redelivery (the first attempt died) claims again with the next attempt number.
    second = deps.tasks.claim(task.task_id)
    assert (second.status, second.attempt) == ("running", 2)
    # The first attempt no longer owns the task.
    with pytest.raises(ClaimLost):
        deps.tasks.finish(task.task_id, 1, "done")
    deps.tasks.finish(task.task_id, 2, "done", usage={"total_tokens": 4})
    done = deps.tasks.get(task.task_id)
    assert done.status == "done" and done.usage == {"total_tokens": 4}
    assert done.finished_at is not None


def test_a_final_task_is_never_claimed_again(deps: Deps) -> None:
    task = new_task(deps)
    deps.tasks.claim(task.task_id)
    deps.tasks.finish(task.task_id, 1, "error", error="boom")
    with pytest.raises(TaskAlreadyFinal):
        deps.tasks.claim(task.task_id)


def test_unknown_task(deps: Deps) -> None:
    with pytest.raises(TaskNotFound):
        deps.tasks.get(uuid.uuid4().hex)
    with pytest.raises(TaskNotFound):
        deps.tasks.claim(uuid.uuid4().hex)


def test_cancel_on_disconnect_flags_only_a_live_task_of_its_owner(deps: Deps) -> None:
    live, done, gone = new_task(deps), new_task(deps), uuid.uuid4().hex
    deps.tasks.claim(done.task_id)
    deps.tasks.finish(done.task_id, 1, "done")
    deps.tasks.cancel_on_disconnect(live.task_id, "someone-else")
    assert deps.tasks.get(live.task_id).cancel_requested is False
    deps.tasks.cancel_on_disconnect(live.task_id, live.owner)
    assert deps.tasks.get(live.task_id).cancel_requested is True
    # a final task is left as it is, a missing one is not created
    deps.tasks.cancel_on_disconnect(done.task_id, done.owner)
    assert deps.tasks.get(done.task_id).cancel_requested is False
    deps.tasks.cancel_on_disconnect(gone, live.owner)
    with pytest.raises(TaskNotFound):
        deps.tasks.get(gone)
