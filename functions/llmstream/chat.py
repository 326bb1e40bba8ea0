"""The api function's core: accept a chat request, and report on one.

Every function here takes the signed-in Principal and reaches tasks only through the
owner's view of the table (``TaskStore.owned_by``) and sessions only by their owner's key:
another user's task or session id is answered exactly like one that does not exist.
"""

from __future__ import annotations

import json
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
from pydantic import BaseModel

from llmstream import intake, tokens
from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.exceptions import IdempotencyConflict
from llmstream.models import (
    CancelResult,
    ChatAccepted,
    ChatRequest,
    SessionHistory,
    SessionList,
    SessionSummary,
    SessionTurn,
    TaskStatus,
    Usage,
)
from llmstream.sessions import Session
from llmstream.settings import ApiSettings
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
        ids = intake.enqueue(deps, settings, user, request)
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
        return intake.enqueue(deps, settings, user, request)

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


def stream_url(deps: Deps, settings: ApiSettings, task_id: str, owner: str) -> str:
    token = tokens.sign(deps.token_key, task_id, owner, settings.stream_token_ttl_seconds)
    base = settings.stream_base_url.rstrip("/")
    return f"{base}/stream/{task_id}?token={quote(token)}"


def cancel(deps: Deps, user: Principal, task_id: str) -> CancelResult:
    """Cancel a task (intake.cancel); calling it again, or on a finished task, changes
    nothing."""
    task = intake.cancel(deps, user, task_id)
    return CancelResult(task_id=task_id, status=task.status, cancel_requested=task.cancel_requested)


def sessions(deps: Deps, user: Principal) -> SessionList:
    return SessionList(sessions=[_view(SessionSummary, s) for s in deps.sessions.list(user.sub)])


def delete_session(deps: Deps, user: Principal, session_id: str) -> None:
    """Delete a conversation with its turns and their answers.

    Turn by turn (intake.forget), page after page (a query page stops at 1 MB, a few dozen
    long turns). The session row goes last, so a delete cut short (a timeout, a store
    error) leaves the conversation listed with the turns not yet deleted, and deleting it
    again finishes the job.
    """
    deps.sessions.get(user.sub, session_id)  # SessionNotFound if not the caller's
    for task in deps.tasks.owned_by(user.sub).session(session_id, limit=DELETE_MAX_TURNS):
        intake.forget(deps, task)
    deps.sessions.delete(user.sub, session_id)


def session(deps: Deps, user: Principal, session_id: str) -> SessionHistory:
    deps.sessions.get(user.sub, session_id)  # SessionNotFound if not the caller's
    tasks = deps.tasks.owned_by(user.sub).session(session_id)
    return SessionHistory(
        session_id=session_id,
        turns=[
            _view(SessionTurn, t, usage=_usage(t.usage), calls=json.loads(t.calls or "[]"))
            for t in tasks
        ],
    )


def status(deps: Deps, settings: ApiSettings, user: Principal, task_id: str) -> TaskStatus:
    task = deps.tasks.owned_by(user.sub).get(task_id)
    text: list[str] = []
    calls: list[dict[str, str]] = []
    last_seq = 0
    for event in deps.log.read_all(task_id):
        last_seq = event.seq
        if event.kind == "reset":  # a retried attempt starts its answer over
            text.clear()
            calls.clear()
        elif event.kind == "chunk":
            text.append(str(event.data.get("chunk", "")))
        elif event.kind == "call":
            calls.append({"id": event.data["id"], "name": event.data["name"], "arguments": ""})
        elif event.kind == "args" and calls:
            calls[-1]["arguments"] += str(event.data.get("delta", ""))
    return _view(
        TaskStatus,
        task,
        text="".join(text),
        calls=calls,
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
