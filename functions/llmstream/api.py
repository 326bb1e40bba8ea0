"""Api function: FastAPI behind API Gateway (HTTP API) through Mangum."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from mangum import Mangum

from llmstream import chat, web
from llmstream.deps import Deps, get_deps
from llmstream.models import (
    ID_PATTERN,
    CancelResult,
    ChatAccepted,
    ChatRequest,
    ErrorBody,
    Health,
    TaskStatus,
)
from llmstream.settings import ApiSettings, get_api_settings

settings = get_api_settings()  # fails at cold start when misconfigured, not on a request

app = FastAPI(
    title="llmstream",
    version="0.1.0",
    description="Queue a chat request (202 at once); follow its answer on the stream URL.",
)
web.configure(app, settings)

DepsDep = Annotated[Deps, Depends(get_deps)]
SettingsDep = Annotated[ApiSettings, Depends(get_api_settings)]
TaskId = Annotated[str, Path(pattern=ID_PATTERN, description="Task id from POST /chat")]
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    422: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


@app.post("/chat", status_code=202, response_model=ChatAccepted, responses=ERRORS)
def post_chat(body: ChatRequest, deps: DepsDep, cfg: SettingsDep) -> ChatAccepted:
    """Record and enqueue a chat request; answer at once with where to stream it from."""
    return chat.submit(deps, cfg, body)


@app.get("/chat/{task_id}", response_model=TaskStatus, responses=ERRORS)
def get_chat(task_id: TaskId, deps: DepsDep) -> TaskStatus:
    """Status, text so far, usage and timings of one task."""
    return chat.status(deps, task_id)


@app.post("/chat/{task_id}/cancel", response_model=CancelResult, responses=ERRORS)
def cancel_chat(task_id: TaskId, deps: DepsDep) -> CancelResult:
    """Stop a task: queued ones at once, running ones within about a second. Idempotent."""
    return chat.cancel(deps, task_id)


@app.get("/health", response_model=Health)
def health() -> Health:
    """Liveness: answers without touching any dependency."""
    return Health(service="api")


handler = Mangum(app, lifespan="off")
