"""The api function's core: accept a chat request, and report on one."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from llmstream import tokens
from llmstream.deps import Deps
from llmstream.exceptions import QueueUnavailable, SessionNotFound
from llmstream.models import (
    CancelResult,
    ChatAccepted,
    ChatRequest,
    SessionHistory,
    SessionTurn,
    TaskMessage,
    TaskStatus,
    Usage,
)
from llmstream.settings import ApiSettings
from llmstream.tasks import Task


def submit(deps: Deps, settings: ApiSettings, request: ChatRequest) -> ChatAccepted:
    """Record the request (status queued), enqueue its id, and hand back a stream URL."""
    task_id = uuid.uuid4().hex
    session_id = request.session_id or uuid.uuid4().hex
    task = Task(
        task_id=task_id,
        session_id=session_id,
        status="queued",
        model=request.model or settings.model_id,
        message=request.message,
        priority=request.priority,
        system=request.system,
        max_tokens=min(request.max_tokens or settings.max_tokens_limit, settings.max_tokens_limit),
        temperature=request.temperature,
        cancel_on_disconnect=request.cancel_on_disconnect,
        created_at=time.time(),
    )
    # The row first, then the message: a worker that receives the id always finds the row.
    deps.tasks.create(task)
    try:
        deps.sqs.send_message(
            QueueUrl=settings.queue_url_for(request.priority),
            MessageBody=TaskMessage(task_id=task_id).model_dump_json(),
        )
    except (ClientError, BotoCoreError) as e:
        raise QueueUnavailable(f"could not enqueue task: {e}") from e
    return ChatAccepted(
        task_id=task_id, session_id=session_id, stream_url=stream_url(deps, settings, task_id)
    )


def stream_url(deps: Deps, settings: ApiSettings, task_id: str) -> str:
    token = tokens.sign(deps.token_key, task_id, settings.stream_token_ttl_seconds)
    base = settings.stream_base_url.rstrip("/")
    return f"{base}/stream/{task_id}?token={quote(token)}"


def cancel(deps: Deps, task_id: str) -> CancelResult:
    """Cancel a task; calling it again, or on a finished task, changes nothing.

    A task no worker holds yet is ended here (its stream gets the cancelled event); a
    running one is flagged, and its worker stops the model call within a second.
    """
    task = deps.tasks.request_cancel(task_id)
    if task.status in ("queued", "waiting") and deps.tasks.cancel_unstarted(task_id):
        last = deps.log.last(task_id)  # a deferred task may have written part of an answer
        # No worker holds the task (its status moved from queued), so this seq is free.
        deps.log.append(task_id, (last.seq if last else 0) + 1, "cancelled", {"type": "cancelled"})
        task = deps.tasks.get(task_id)
    return CancelResult(task_id=task_id, status=task.status, cancel_requested=task.cancel_requested)


def session(deps: Deps, session_id: str) -> SessionHistory:
    tasks = deps.tasks.session(session_id)
    if not tasks:
        raise SessionNotFound(session_id)
    return SessionHistory(
        session_id=session_id,
        turns=[
            SessionTurn(
                task_id=t.task_id,
                status=t.status,
                message=t.message,
                answer=t.answer,
                usage=Usage.model_validate(t.usage) if t.usage else None,
                created_at=t.created_at,
                finished_at=t.finished_at,
            )
            for t in tasks
        ],
    )


def status(deps: Deps, task_id: str) -> TaskStatus:
    task = deps.tasks.get(task_id)
    text: list[str] = []
    last_seq = 0
    for event in deps.log.read_all(task_id):
        last_seq = event.seq
        if event.kind == "reset":  # a retried attempt starts its text over
            text.clear()
        elif event.kind == "chunk":
            text.append(str(event.data.get("chunk", "")))
    return TaskStatus(
        task_id=task.task_id,
        session_id=task.session_id,
        status=task.status,
        model=task.model,
        text="".join(text),
        usage=Usage.model_validate(task.usage) if task.usage else None,
        error=task.error,
        attempt=task.attempt,
        cancel_requested=task.cancel_requested,
        retry_at=task.retry_at,
        created_at=task.created_at,
        started_at=task.started_at,
        first_token_at=task.first_token_at,
        finished_at=task.finished_at,
        last_seq=last_seq,
    )
