"""A request's way in (admitted, recorded, its id queued) and out (cancelled, forgotten).

POST /chat (chat.py, in the api function) and the OpenAI-compatible routes (v1/, in the
stream function) both accept work here, so every request is the same kind of task: the same
queue, worker, chunk log, quotas and ownership. It stays light (no idempotency layer, no
model SDK) because the stream function's cold start pays for its imports.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from llmstream import observe, reservations
from llmstream.admission import admit
from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.exceptions import QueueUnavailable, StoreUnavailable
from llmstream.models import FINAL_STATES, ChatRequest, TaskMessage
from llmstream.settings import Settings, priority_name
from llmstream.tasks import Task


def enqueue(
    deps: Deps, settings: Settings, user: Principal, request: ChatRequest
) -> dict[str, str]:
    """``accept`` for POST /chat: the ids its 202 (and the idempotency record) carry."""
    task = accept(deps, settings, user, request)
    return {"task_id": task.task_id, "session_id": task.session_id}


def accept(
    deps: Deps,
    settings: Settings,
    user: Principal,
    request: ChatRequest,
    *,
    extras: dict[str, Any] | None = None,
    service: str = "api",
) -> Task:
    """Admit ``request`` (admission.py: its model, priority and quota), start or continue
    its session, store its row (with ``extras``: the Task fields an OpenAI-style request
    adds), then queue its id. Anything that fails on the way gives the reserved tokens
    back and raises."""
    now = time.time()
    metrics = observe.Record(service, priority=priority_name(request.priority))
    trace = observe.current_trace()
    task = admit(
        deps,
        settings,
        user,
        request,
        now=now,
        trace_id=observe.trace_id(trace),
        metrics=metrics,
        extras={**request.task_fields(), **(extras or {})},
    )
    task_id, session_id = task.task_id, task.session_id
    stored = False
    try:
        if request.session_id:
            # Continuing a conversation: only its owner may (another user's id is not found).
            deps.sessions.touch(user.sub, session_id, now)
        else:
            deps.sessions.start(user.sub, session_id, request.message, now)
        # The row first, then the message: a worker that receives the id always finds it.
        deps.tasks.create(task)
        stored = True
        try:
            deps.sqs.send_message(
                QueueUrl=settings.queue_url_for(request.priority),
                MessageBody=TaskMessage(task_id=task_id).model_dump_json(),
                **observe.trace_attribute(trace),
            )
        except (ClientError, BotoCoreError) as e:
            raise QueueUnavailable(f"could not enqueue task: {e}") from e
    except Exception:
        _give_back(deps, task, stored)
        raise
    observe.correlate(task_id=task_id)
    observe.logger.info(
        "chat accepted",
        extra={"priority": request.priority, "model": task.model, "new_session": task.new_session},
    )
    metrics.count("ChatAccepted")
    metrics.property(task_id=task_id, trace_id=task.trace_id)
    metrics.flush()
    return task


def _give_back(deps: Deps, task: Task, stored: bool) -> None:
    """A request admitted but not sent (a conversation not found, a store or the queue
    down) gives its reserved tokens back; once its row exists, through the row, so that a
    later cancel of it cannot give them back a second time."""
    if stored:
        reservations.settle_quietly(deps, task, 0)
        return
    try:
        deps.quotas.settle(task.owner, task.reserved, 0, task.created_at)
    except StoreUnavailable:
        observe.logger.warning("could not give back a request's reserved tokens")


def cancel(deps: Deps, user: Principal, task_id: str) -> Task:
    """Cancel one of ``user``'s tasks and return its row; calling it again, or on a finished
    task, changes nothing.

    A task no worker holds yet is ended here (its stream gets the cancelled event); a
    running one is flagged, and its worker stops the model call within a second.
    """
    tasks = deps.tasks.owned_by(user.sub)
    task = tasks.request_cancel(task_id)
    if task.status in ("queued", "waiting") and tasks.cancel_unstarted(task_id):
        reservations.release(deps, task)  # it never reaches the model now
        last = deps.log.last(task_id)  # a deferred task may have written part of an answer
        # No worker holds the task (its status moved from queued), so this seq is free.
        deps.log.append(task_id, (last.seq if last else 0) + 1, "cancelled", {"type": "cancelled"})
        task = tasks.get(task_id)
    return task


def forget(deps: Deps, task: Task) -> None:
    """Delete one task: its chunk log, then its row becomes a tombstone (no text; it leaves
    its session's index; a running answer's worker sees its claim gone within a second and
    stops), then, for an answer that was still running, its log once more (what it wrote
    in between)."""
    deps.log.delete(task.task_id)
    if task.status not in FINAL_STATES:
        # The tombstone keeps no reservation: give it back first. A running answer then
        # loses its claim and charges what it used itself (answer.py).
        reservations.release(deps, task)
    deps.tasks.tombstone(task.task_id, task.owner)
    if task.status not in FINAL_STATES:
        deps.log.delete(task.task_id)
