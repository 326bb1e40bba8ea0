"""Admission of a chat request: its model, its priority, the caller's quota (the day's
tokens reserved), and the Task that answers it.

POST /chat (chat.py) and direct mode (stream.py) both come in here, so a request is judged
the same whichever way it is answered. It lives apart from chat.py, which imports the
idempotency layer, so the stream function's cold start does not pay for that.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.exceptions import Forbidden, QuotaExceeded
from llmstream.limits import prompt_tokens
from llmstream.models import PRIORITY_MAX, ChatRequest, TaskState
from llmstream.observe import Record
from llmstream.settings import Settings, choose_model
from llmstream.tasks import Task


def admit(
    deps: Deps,
    settings: Settings,
    user: Principal,
    request: ChatRequest,
    *,
    status: TaskState = "queued",
    now: float | None = None,
    trace_id: str | None = None,
    metrics: Record | None = None,
    extras: dict[str, Any] | None = None,
) -> Task:
    """The task that answers ``request`` for ``user``, once its model is one the deployment
    offers (ModelNotAllowed: 422, before any quota), its priority is the caller's to ask
    for (Forbidden: 403) and the caller's quota admits it (QuotaExceeded: 429 with
    Retry-After). The tokens it may use are reserved on the caller's day (``reserved``):
    whoever ends it settles them (reservations.py), or gives them back if it is never
    sent. Its session is the request's or a new id; nothing is stored. ``metrics``, if
    given, gets the model's dimension and counts a refusal. ``extras`` are Task fields an
    OpenAI-style request adds (its ``input`` messages, ``top_p``, ``metadata``...)."""
    now = time.time() if now is None else now
    model = choose_model(settings, request.model)
    if metrics is not None:
        metrics.dimension(model=model)
    if request.priority > max_priority(settings, user):
        raise Forbidden(
            f"a priority above 0 is for the {settings.priority_group} group; "
            "send 0 (default) or below"
        )
    max_tokens = min(request.max_tokens or settings.max_tokens_limit, settings.max_tokens_limit)
    extras = extras or {}
    wanted = estimate(settings, request, max_tokens, extras.get("input"), extras.get("tools"))
    try:
        reserved = deps.quotas.admit(user.sub, wanted, now)
    except QuotaExceeded:
        if metrics is not None:
            metrics.count("RequestsRateLimited")
            metrics.flush()
        raise
    return Task(
        task_id=uuid.uuid4().hex,
        session_id=request.session_id or uuid.uuid4().hex,
        status=status,
        model=model,
        message=request.message,
        owner=user.sub,
        priority=request.priority,
        system=request.system,
        max_tokens=max_tokens,
        temperature=request.temperature,
        cancel_on_disconnect=request.cancel_on_disconnect,
        created_at=now,
        new_session=request.session_id is None,
        trace_id=trace_id,
        reserved=reserved,
        **extras,
    )


def max_priority(settings: Settings, user: Principal) -> int:
    """The highest priority ``user`` may ask for: above 0 is for the PriorityGroup."""
    return PRIORITY_MAX if user.member_of(settings.priority_group) else 0


def estimate(
    settings: Settings,
    request: ChatRequest,
    max_tokens: int,
    messages: list[dict[str, Any]] | None = None,
    tools: str | None = None,
) -> int:
    """The most an answer may use, to reserve: its prompt (~4 characters a token; the
    request's ``messages`` in place of its message when it has them, and its ``tools``),
    the history a continued conversation may send with it, and the completion it allows."""
    said = [json.dumps(m) for m in messages] if messages else [request.message]
    texts = [*said, *([request.system] if request.system else []), *([tools] if tools else [])]
    history = settings.history_token_budget if request.session_id else 0
    return prompt_tokens(texts) + history + max_tokens
