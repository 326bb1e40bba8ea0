"""How an answer attempt's ending is recorded: its quota settled, its terminal event, then
its row (answer.py decides which ending; here each is written, in that order)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from llmstream.chunklog.writer import ChunkWriter
from llmstream.deps import Deps
from llmstream.exceptions import ClaimLost, LogDiverged
from llmstream.models import EventKind
from llmstream.observe import Record
from llmstream.tasks import Task

logger = logging.getLogger(__name__)

# The metrics of an attempt's outcome (observe.py): exactly one per attempt that claimed
# its task.
DONE, ERROR, CANCELLED, TIMED_OUT = (
    "AnswersDone",
    "AnswersError",
    "AnswersCancelled",
    "AnswersTimedOut",
)


def end(
    deps: Deps,
    writer: ChunkWriter,
    task: Task,
    kind: EventKind,
    data: dict[str, Any],
    metrics: Record,
    settle: Callable[[], None],
) -> None:
    """The answer ends done or cancelled: its quota settled, its terminal event, its row."""
    settle()
    writer.event(kind, data)
    metrics.count(DONE if kind == "done" else CANCELLED)
    if kind == "done":
        answer = "".join(writer.text)[: deps.settings.answer_max_chars]
        calls = json.dumps(writer.calls, ensure_ascii=False) if writer.calls else None
        deps.tasks.finish(
            task.task_id, task.attempt, "done", usage=data.get("usage"), answer=answer, calls=calls
        )
    else:
        deps.tasks.finish(task.task_id, task.attempt, "cancelled")


def fail(
    deps: Deps,
    writer: ChunkWriter,
    task: Task,
    message: str,
    settle: Callable[[], None],
    model_status: int | None = None,
) -> None:
    """The answer ends in an error: its quota settled, its terminal event, then its row.
    ``model_status``: the model API's HTTP status when it refused the request (a 400 says
    the request was wrong, which /v1 tells its client as such)."""
    logger.warning("task %s ends in error: %s", task.task_id, message)
    settle()
    data: dict[str, Any] = {"type": "error", "message": message}
    if model_status is not None:
        data["model_status"] = model_status
    try:
        writer.event("error", data)
    except ClaimLost:
        return
    except LogDiverged:
        # The log lost events under this attempt and there is no retry left: the error
        # still has to reach viewers, after whatever the log holds now.
        writer.resync()
        writer.event("error", data)
    deps.tasks.finish(task.task_id, task.attempt, "error", error=message)


def control(deps: Deps, task: Task) -> str | None:
    """Why the running answer must stop now, if it must: a cancel, or a newer claim."""
    cancel_requested, attempt = deps.tasks.control(task.task_id)
    if attempt != task.attempt:
        return "claim lost"
    return "cancelled" if cancel_requested else None


def finish_ended(deps: Deps, task_id: str, attempt: int, kind: str, data: dict[str, Any]) -> None:
    """The row of a task whose log already ended (an earlier attempt wrote the end)."""
    if kind == "done":
        deps.tasks.finish(task_id, attempt, "done", usage=data.get("usage"))
    elif kind == "error":
        deps.tasks.finish(task_id, attempt, "error", error=data.get("message"))
    else:
        deps.tasks.finish(task_id, attempt, "cancelled")
