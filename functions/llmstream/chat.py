"""The api function's core: accept a chat request, and report on one.

Every function here takes the signed-in Principal and reaches tasks only through the
owner's view of the table (``TaskStore.owned_by``) and sessions only by their owner's key:
another user's task or session id is answered exactly like one that does not exist.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, TypeVar
from urllib.parse import quote

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from llmstream import observe, reservations, tokens
from llmstream.admission import admit
from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.exceptions import IdempotencyConflict, QueueUnavailable, StoreUnavailable
from llmstream.models import (
    FINAL_STATES,
    CancelResult,
    ChatAccepted,
    ChatRequest,
    SessionHistory,
    SessionList,
    SessionSummary,
    SessionTurn,
    TaskMessage,
    TaskStatus,
    Usage,
)
from llmstream.sessions import Session
from llmstream.settings import ApiSettings, priority_name
from llmstream.tasks import Task, worker_lost

View = TypeVar("View", bound=BaseModel)


# Delete takes every turn of a conversation: a bound, not a page size (the query pages).
DELETE_MAX_TURNS = 100_000


def submit(
    deps: Deps,
    settings: ApiSettings,
    user: Principal,
    request: ChatRequest,
    idempotency_key: str | None = None,
) -> ChatAccepted:
    """Record the request (status queued), enqueue its id, and hand back a stream URL.

    With an Idempotency-Key, a repeat of the same request returns the first one's task (a
    fresh stream URL for it) and never queues a second model call; the same key with a
    different body is refused (422), and one whose first request is still in flight (409).
    Keys are the caller's own: another user's identical key is another request.
    """
    if idempotency_key is None:
        ids = _enqueue(deps, settings, user, request)
    else:
        ids = _idempotent_enqueue(deps, settings, user, request, idempotency_key)
    return ChatAccepted(
        task_id=ids["task_id"],
        session_id=ids["session_id"],
        stream_url=stream_url(deps, settings, ids["task_id"], user.sub),
    )


def _idempotent_enqueue(
    deps: Deps, settings: ApiSettings, user: Principal, request: ChatRequest, key: str
) -> dict[str, str]:
    persistence = DynamoDBPersistenceLayer(
        table_name=settings.idempotency_table, boto3_client=deps.dynamodb
    )
    config = IdempotencyConfig(
        event_key_jmespath="key",
        payload_validation_jmespath="request",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.idempotency_ttl_seconds,
    )

    @idempotent_function(  # type: ignore[untyped-decorator]  # Powertools' decorator
        data_keyword_argument="data",
        persistence_store=persistence,
        config=config,
        key_prefix="llmstream.chat",
    )
    def enqueue_once(data: dict[str, Any]) -> dict[str, str]:
        return _enqueue(deps, settings, user, request)

    try:
        result: dict[str, str] = enqueue_once(
            data={"key": f"{user.sub}:{key}", "request": request.model_dump(mode="json")}
        )
    except IdempotencyValidationError as e:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request body", 422
        ) from e
    except IdempotencyAlreadyInProgressError as e:
        raise IdempotencyConflict(
            "a request with this Idempotency-Key is still being processed; retry shortly", 409
        ) from e
    return result


def _enqueue(
    deps: Deps, settings: ApiSettings, user: Principal, request: ChatRequest
) -> dict[str, str]:
    now = time.time()
    metrics = observe.Record("api", priority=priority_name(request.priority))
    trace = observe.current_trace()
    task = admit(
        deps, settings, user, request, now=now, trace_id=observe.trace_id(trace), metrics=metrics
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
    return {"task_id": task_id, "session_id": session_id}


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


def stream_url(deps: Deps, settings: ApiSettings, task_id: str, owner: str) -> str:
    token = tokens.sign(deps.token_key, task_id, owner, settings.stream_token_ttl_seconds)
    base = settings.stream_base_url.rstrip("/")
    return f"{base}/stream/{task_id}?token={quote(token)}"


def cancel(deps: Deps, user: Principal, task_id: str) -> CancelResult:
    """Cancel a task; calling it again, or on a finished task, changes nothing.

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
    return CancelResult(task_id=task_id, status=task.status, cancel_requested=task.cancel_requested)


def sessions(deps: Deps, user: Principal) -> SessionList:
    return SessionList(sessions=[_view(SessionSummary, s) for s in deps.sessions.list(user.sub)])


def delete_session(deps: Deps, user: Principal, session_id: str) -> None:
    """Delete a conversation with its turns and their answers.

    Turn by turn, page after page (a query page stops at 1 MB, a few dozen long turns):
    its chunk log is deleted, then its row becomes a tombstone (no text; it leaves the
    session's index; a running answer's worker sees its claim gone within a second and
    stops), then, for an answer that was still running, its log once more (what it wrote
    in between). The session row goes last, so a delete cut short (a timeout, a store
    error) leaves the conversation listed with the turns not yet deleted, and deleting it
    again finishes the job.
    """
    deps.sessions.get(user.sub, session_id)  # SessionNotFound if not the caller's
    for task in deps.tasks.owned_by(user.sub).session(session_id, limit=DELETE_MAX_TURNS):
        deps.log.delete(task.task_id)
        if task.status not in FINAL_STATES:
            # The tombstone keeps no reservation: give it back first. A running answer
            # then loses its claim and charges what it used itself (answer.py).
            reservations.release(deps, task)
        deps.tasks.tombstone(task.task_id, user.sub)
        if task.status not in FINAL_STATES:
            deps.log.delete(task.task_id)
    deps.sessions.delete(user.sub, session_id)


def session(deps: Deps, user: Principal, session_id: str) -> SessionHistory:
    deps.sessions.get(user.sub, session_id)  # SessionNotFound if not the caller's
    tasks = deps.tasks.owned_by(user.sub).session(session_id)
    return SessionHistory(
        session_id=session_id, turns=[_view(SessionTurn, t, usage=_usage(t.usage)) for t in tasks]
    )


def status(deps: Deps, settings: ApiSettings, user: Principal, task_id: str) -> TaskStatus:
    task = deps.tasks.owned_by(user.sub).get(task_id)
    text: list[str] = []
    last_seq = 0
    for event in deps.log.read_all(task_id):
        last_seq = event.seq
        if event.kind == "reset":  # a retried attempt starts its text over
            text.clear()
        elif event.kind == "chunk":
            text.append(str(event.data.get("chunk", "")))
    return _view(
        TaskStatus,
        task,
        text="".join(text),
        usage=_usage(task.usage),
        last_seq=last_seq,
        worker_lost=worker_lost(task, deps.settings.worker_heartbeat_seconds, time.time()),
        stream_url=stream_url(deps, settings, task.task_id, user.sub),
    )


def _view(model: type[View], row: Task | Session, **computed: Any) -> View:
    """An API model of a stored row: the fields they share by name, and ``computed`` ones."""
    return model.model_validate({**asdict(row), **computed})


def _usage(usage: dict[str, Any] | None) -> Usage | None:
    # A model that reported no usage stored none (or an empty one): no usage, not zeros.
    return Usage.model_validate(usage) if usage else None
