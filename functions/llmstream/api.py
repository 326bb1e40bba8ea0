"""Api function: FastAPI behind API Gateway (HTTP API) through Mangum."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Response
from mangum import Mangum

from llmstream import chat, embeddings, observe, ops, web
from llmstream.admission import max_priority
from llmstream.api_key_models import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo, ApiKeyList
from llmstream.api_keys import KEY_ID_PATTERN, ApiKeyStore
from llmstream.models import (
    ID_PATTERN,
    Account,
    CancelResult,
    ChatAccepted,
    ChatRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
    Health,
    HealthFull,
    ModelTest,
    SessionHistory,
    SessionList,
    Stats,
    TaskStatus,
)
from llmstream.settings import ApiSettings, get_api_settings
from llmstream.web import AdminUser, DepsDep, SignedInUser

observe.setup("api")
logger = observe.logger
settings = get_api_settings()  # fails at cold start when misconfigured, not on a request

app = FastAPI(
    title="llmstream",
    version="0.1.0",
    description="Queue a chat request (202 at once); follow its answer on the stream URL.",
)
web.configure(app, settings)

SettingsDep = Annotated[ApiSettings, Depends(get_api_settings)]
SessionId = Annotated[str, Path(pattern=ID_PATTERN, description="session_id from POST /chat")]
TaskId = Annotated[str, Path(pattern=ID_PATTERN, description="Task id from POST /chat")]
KeyId = Annotated[str, Path(pattern=KEY_ID_PATTERN, description="id from POST or GET /keys")]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    409: {"model": ErrorBody},
    502: {"model": ErrorBody},
    404: {"model": ErrorBody},
    422: {"model": ErrorBody},
    503: {"model": ErrorBody},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {"model": ErrorBody}}


@app.post(
    "/chat",
    status_code=202,
    response_model=ChatAccepted,
    responses={**ERRORS, 403: {"model": ErrorBody}, 429: {"model": ErrorBody}},
)
def post_chat(
    body: ChatRequest,
    user: SignedInUser,
    deps: DepsDep,
    cfg: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Repeat a request safely: the same key returns the same task",
        ),
    ] = None,
) -> ChatAccepted:
    """Record and enqueue a chat request; answer at once with where to stream it from.
    A priority above 0 is for the PriorityGroup's members (403 for anyone else)."""
    return chat.submit(deps, cfg, user, body, idempotency_key)


@app.get("/chat/{task_id}", response_model=TaskStatus, responses=ERRORS)
def get_chat(task_id: TaskId, user: SignedInUser, deps: DepsDep, cfg: SettingsDep) -> TaskStatus:
    """Status, text so far, usage and timings of one of your tasks, and a fresh stream URL."""
    return chat.status(deps, cfg, user, task_id)


@app.post("/chat/{task_id}/cancel", response_model=CancelResult, responses=ERRORS)
def cancel_chat(task_id: TaskId, user: SignedInUser, deps: DepsDep) -> CancelResult:
    """Stop a task: queued ones at once, running ones within about a second. Idempotent."""
    return chat.cancel(deps, user, task_id)


@app.get("/sessions", response_model=SessionList, responses=ERRORS)
def list_sessions(user: SignedInUser, deps: DepsDep) -> SessionList:
    """Your conversations, most recently active first."""
    return chat.sessions(deps, user)


@app.get("/sessions/{session_id}", response_model=SessionHistory, responses=ERRORS)
def get_session(session_id: SessionId, user: SignedInUser, deps: DepsDep) -> SessionHistory:
    """A conversation: its turns (message, answer, status, usage), oldest first."""
    return chat.session(deps, user, session_id)


@app.delete("/sessions/{session_id}", status_code=204, responses=ERRORS)
def delete_session(session_id: SessionId, user: SignedInUser, deps: DepsDep) -> Response:
    """Delete a conversation with its turns and answers (running ones are cancelled)."""
    chat.delete_session(deps, user, session_id)
    return Response(status_code=204)


@app.get("/me", response_model=Account, responses=ERRORS)
def me(user: SignedInUser, cfg: SettingsDep) -> Account:
    """Who you are signed in as, and what you may ask for (the page offers only that)."""
    return Account(
        username=user.username,
        groups=sorted(user.groups),
        operator=user.member_of(cfg.auth_admin_group),
        max_priority=max_priority(cfg, user),
    )


@app.get("/health", response_model=Health)
def health() -> Health:
    """Liveness: answers without touching any dependency."""
    return Health(service="api")


@app.get(
    "/health/full",
    response_model=HealthFull,
    responses={**ADMIN_ERRORS, 503: {"model": HealthFull}},
)
def health_full(_: AdminUser, deps: DepsDep, response: Response) -> HealthFull:
    """Tables, queues (with depths) and the model, each with its latency; 503 if any fails."""
    result = ops.health_full(deps)
    if result.status != "ok":
        response.status_code = 503
    return result


@app.get("/stats", response_model=Stats, responses=ADMIN_ERRORS)
def get_stats(_: AdminUser, deps: DepsDep) -> Stats:
    """Queue depth per priority and DLQ, requests by status, TTFT and tokens/s percentiles."""
    return ops.stats(deps)


@app.get("/test", response_model=ModelTest, responses={**ADMIN_ERRORS, 502: {"model": ModelTest}})
def model_test(_: AdminUser, deps: DepsDep, response: Response) -> ModelTest:
    """One tiny model call: is the model reachable with this key?"""
    result = ops.test_model(deps)
    if not result.ok:
        response.status_code = 502
    return result


@app.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    responses={**ERRORS, 429: {"model": ErrorBody}},
)
def post_embeddings(
    body: EmbeddingsRequest, user: SignedInUser, deps: DepsDep
) -> EmbeddingsResponse:
    """Vectors for a batch of texts, in input order (split to the model's batch limit).
    The caller's daily tokens are reserved for the inputs (~4 characters a token) and each
    batch is charged what the model reports as it comes back."""
    return embeddings.embed(deps, user, body)


def key_store(deps: DepsDep) -> ApiKeyStore:
    if deps.api_keys is None:
        raise HTTPException(404, "personal API keys are off here (no API_KEYS_TABLE)")
    return deps.api_keys


KeyStore = Annotated[ApiKeyStore, Depends(key_store)]
KEY_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {"model": ErrorBody}}


@app.post("/keys", status_code=201, response_model=ApiKeyCreated, responses=KEY_ERRORS)
def create_key(body: ApiKeyCreate, user: SignedInUser, keys: KeyStore) -> ApiKeyCreated:
    """A personal API key for the stream URL's routes (`Authorization: Bearer lls_...`;
    OpenAI clients: `base_url=<stream url>/v1`). The key is in this answer only: it is kept
    as a hash. Signed in only (403 for a key); USER_MAX_API_KEYS per user (409 beyond)."""
    return ApiKeyCreated.of(keys.create(user.sub, user.username, body.name))


@app.get("/keys", response_model=ApiKeyList, responses=KEY_ERRORS)
def list_keys(user: SignedInUser, keys: KeyStore) -> ApiKeyList:
    """Your API keys, newest first: name, prefix, created, last used (to the minute)."""
    return ApiKeyList(keys=[ApiKeyInfo.of(key) for key in keys.list(user.sub)])


@app.delete("/keys/{key_id}", status_code=204, responses=KEY_ERRORS)
def revoke_key(key_id: KeyId, user: SignedInUser, keys: KeyStore) -> Response:
    """Revoke one of your keys: its next request is refused (401)."""
    keys.revoke(user.sub, key_id)
    return Response(status_code=204)


_mangum = Mangum(app, lifespan="off")


@logger.inject_lambda_context  # cold_start, function_name and request id on every line
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return _mangum(event, context)  # type: ignore[arg-type]  # Mangum's event union
