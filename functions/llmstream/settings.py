"""Configuration, read once per process from the environment.

Required fields have no defaults on purpose: a function started without its table or queue
must fail at start with a clear message, not later as an AWS error (STYLE.md #5).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmstream.exceptions import ModelNotAllowed

# The chunk-log write interval per backend, when CHUNK_FLUSH_INTERVAL_MS does not set one.
DEFAULT_FLUSH_INTERVAL_MS = {"dynamodb": 110, "redis": 0}


class Settings(BaseSettings):
    """What every function needs. The template's Globals set these for all three."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    requests_table: str
    sessions_table: str
    chunks_table: str
    queue_url_high: str
    queue_url_default: str
    queue_url_low: str
    dead_letter_queue_url: str
    idempotency_table: str
    rate_limit_table: str
    # Model rate limits shared by all workers (token buckets); 0 means no limit.
    llm_rpm: int = Field(default=0, ge=0, description="Model requests per minute")
    llm_tpm: int = Field(default=0, ge=0, description="Model tokens per minute")
    idempotency_ttl_seconds: int = Field(default=86400, gt=0)
    model_id: str
    # The models a request may name besides MODEL_ID (comma-separated; "*": any). A deployer
    # pays for every model call, so by default a request can only have the default model.
    allowed_models: str = Field(default="", description="Comma-separated model ids, or *")
    # Sign-in: JWTs of one issuer (the template's Cognito user pool, or another OIDC issuer).
    # The JWKS URL defaults to the issuer's own; locally it differs (the emulator's address).
    auth_issuer: str = Field(min_length=1, description="iss of accepted tokens")
    auth_audience: str = Field(
        min_length=1, description="Comma-separated app client ids (aud, or client_id)"
    )
    auth_jwks_url: str | None = None
    auth_token_use: str = Field(default="access", description="Accepted token_use values")
    auth_groups_claim: str = "cognito:groups"
    auth_admin_group: str = Field(default="admins", min_length=1)
    # The group whose members may ask for a priority above the default (the high queue,
    # ahead of everyone's default work); anyone else asking is refused (403).
    priority_group: str = Field(default="admins", min_length=1)
    # Per-user quotas on top of the shared model limits; 0 means no limit.
    user_rpm: int = Field(default=0, ge=0, description="Requests per minute per user")
    user_tokens_per_day: int = Field(default=0, ge=0, description="Model tokens per user a day")
    # Streams a user may have open at once (the stream function; leases.py), 0 = no cap. A
    # stream's lease runs out this long after its last renewal (a third of it apart), so
    # the streams of an environment that died free their slots within it.
    user_max_streams: int = Field(default=10, ge=0, description="Open streams per user")
    stream_lease_seconds: int = Field(default=60, ge=3)
    # Personal API keys (api_keys.py): their table (unset: no keys, only sign-in tokens),
    # and how many one user may have.
    api_keys_table: str | None = None
    user_max_api_keys: int = Field(default=20, ge=1, le=1000, description="API keys per user")
    cors_allow_origins: str = Field(description="Comma-separated origins, or *")
    # In the cloud API Gateway and the function URL answer CORS from the template; the local
    # stack sets these from the same template, so a method or header it lacks fails there too.
    cors_allow_methods: str = Field(
        default="GET,POST,DELETE,OPTIONS", description="Comma-separated CORS methods"
    )
    cors_allow_headers: str = Field(
        default="content-type,idempotency-key,authorization,last-event-id",
        description="Comma-separated CORS request headers",
    )
    # The HMAC key of stream tokens: in the cloud a Secrets Manager secret (read once per
    # cold start); a plain value only where there is no Secrets Manager (unit tests).
    stream_token_secret_arn: str | None = None
    stream_token_secret: SecretStr | None = Field(default=None, min_length=32)
    # The OpenAI key: a Secrets Manager secret in the cloud; without one, the openai SDK
    # reads OPENAI_API_KEY itself.
    openai_api_key_secret_arn: str | None = None
    # Where answers are written and streamed from: DynamoDB (the chunks table), or Redis
    # Streams (ElastiCache for Redis OSS / Valkey: REDIS_URL, rediss:// for TLS), which wakes
    # streams on each write instead of being polled.
    chunklog_backend: Literal["dynamodb", "redis"] = "dynamodb"
    redis_url: str | None = Field(default=None, description="redis[s]://[user:pass@]host:port/db")
    redis_key_prefix: str = Field(default="llmstream", min_length=1)

    # Data retention: request rows and chunks expire through the tables' TTL attribute.
    retention_seconds: int = Field(default=7 * 24 * 3600, gt=0)

    # Worker: coalescing of model tokens into chunk-log writes. The first token is written at
    # once (time to first token matters most); after that at most one write per interval.
    # Unset: per backend. DynamoDB bills every write (a write unit each), so tokens are
    # coalesced for 110 ms (under 10 writes per stream-second); a Redis write costs a
    # fraction of an ECPU and wakes the stream at once, so each token is written as it
    # comes (tokens that arrive during a write go out together in the next).
    chunk_flush_interval_ms: int | None = Field(default=None, ge=0)
    chunk_max_chars: int = Field(default=2048, gt=0)
    # OpenAI SDK: its own retries (exponential backoff, honours Retry-After) and timeout.
    openai_max_retries: int = Field(default=2, ge=0)
    openai_timeout_seconds: float = Field(default=60.0, gt=0)
    max_tokens_limit: int = Field(default=4096, gt=0)
    # POST /embeddings: inputs per model call (OpenAI takes at most 2,048), and what one
    # request may carry: its inputs and their characters together (~4 a token), so one
    # request neither spends a day's quota nor outlasts the API's 29 s.
    embedding_model: str = "text-embedding-3-small"
    embeddings_batch_size: int = Field(default=256, ge=1, le=2048)
    embeddings_max_inputs: int = Field(default=256, ge=1, le=10_000)
    embeddings_max_chars: int = Field(default=200_000, ge=1)
    # GET /stats looks at requests of this recent window.
    stats_window_seconds: int = Field(default=3600, gt=0, le=86400)
    # POST /direct on the stream function (the older service's direct mode).
    direct_mode_enabled: bool = False
    # Sessions: earlier turns sent to the model, newest first, up to this many tokens
    # (estimated at 4 characters a token); answers kept on the row up to answer_max_chars.
    history_token_budget: int = Field(default=3000, ge=0)
    answer_max_chars: int = Field(default=100_000, gt=0)
    # An answer ends (error "timeout") after this long, and always before Lambda would stop
    # the worker: the deadline is also "remaining time minus the margin".
    answer_timeout_seconds: float = Field(default=300.0, gt=0)
    lambda_margin_seconds: float = Field(default=5.0, ge=0)
    # How often a running answer looks for a cancel request (cancel lands within ~this).
    cancel_check_interval_ms: int = Field(default=500, gt=0)
    # Heartbeat: while an answer runs, its SQS message stays invisible for this long at a
    # time (extended every quarter of it), so a worker that dies is replaced within about
    # this long instead of the queue's visibility timeout (30 minutes); viewers see "worker
    # lost" when the request row's heartbeat is older than this.
    worker_heartbeat_seconds: int = Field(default=20, ge=2, le=900)
    # Transient model failures (429, 5xx, timeouts) the SDK's retries did not cure go back to
    # the queue with exponential backoff, until the queue's maxReceiveCount (keep equal).
    max_receive_count: int = Field(default=3, ge=1)
    retry_base_seconds: float = Field(default=2.0, ge=0)
    retry_max_seconds: float = Field(default=120.0, ge=0)

    # Stream: between events a stream reads when the writer's next write is due; while
    # nothing is due (model not started, or pausing) it polls at this interval for a second,
    # then backs off to the max. Keep-alive pings keep an idle connection open.
    stream_poll_interval_ms: int = Field(default=25, gt=0)
    stream_poll_max_interval_ms: int = Field(default=500, gt=0)
    stream_ping_seconds: int = Field(default=15, gt=0)
    # A function URL response lasts at most 15 minutes; end before that so the client's
    # EventSource reconnects with Last-Event-ID instead of seeing a cut connection.
    stream_max_seconds: int = Field(default=840, gt=0)
    # Short-lived: a stream token opens one task for its owner; the page asks GET
    # /chat/{task_id} for a fresh one when a resume is refused for expiry. Only the connect
    # is checked: an open stream is not cut when its token expires.
    stream_token_ttl_seconds: int = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _one_token_secret(self) -> Settings:
        if (self.stream_token_secret_arn is None) == (self.stream_token_secret is None):
            raise ValueError("set exactly one of STREAM_TOKEN_SECRET_ARN, STREAM_TOKEN_SECRET")
        return self

    @model_validator(mode="after")
    def _redis_needs_a_url(self) -> Settings:
        if self.chunklog_backend == "redis" and not self.redis_url:
            raise ValueError("CHUNKLOG_BACKEND=redis needs REDIS_URL")
        return self

    def queue_url_for(self, priority: int) -> str:
        """Priority -10..10 picks a queue: >= 5 high, <= -5 low, else default."""
        if priority >= 5:
            return self.queue_url_high
        if priority <= -5:
            return self.queue_url_low
        return self.queue_url_default

    @property
    def jwks_url(self) -> str:
        return self.auth_jwks_url or f"{self.auth_issuer.rstrip('/')}/.well-known/jwks.json"

    @property
    def auth_audiences(self) -> list[str]:
        return [a.strip() for a in self.auth_audience.split(",") if a.strip()]

    @property
    def auth_token_uses(self) -> list[str]:
        return [u.strip() for u in self.auth_token_use.split(",") if u.strip()]

    @property
    def cors_origins(self) -> list[str]:
        return _items(self.cors_allow_origins)

    @property
    def cors_methods(self) -> list[str]:
        return _items(self.cors_allow_methods)

    @property
    def cors_headers(self) -> list[str]:
        return _items(self.cors_allow_headers)

    @property
    def flush_interval_seconds(self) -> float:
        """The chunk-log write interval in effect (CHUNK_FLUSH_INTERVAL_MS, else per backend)."""
        if self.chunk_flush_interval_ms is not None:
            return self.chunk_flush_interval_ms / 1000
        return DEFAULT_FLUSH_INTERVAL_MS[self.chunklog_backend] / 1000


class ApiSettings(Settings):
    """The api function also needs the public base URL of the stream function."""

    stream_base_url: str


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    return ApiSettings()  # type: ignore[call-arg]


def priority_name(priority: int) -> str:
    """The queue a priority goes to (Settings.queue_url_for), as a metric dimension."""
    return "high" if priority >= 5 else "low" if priority <= -5 else "default"


def choose_model(settings: Settings, requested: str | None, default: str | None = None) -> str:
    """The model a request gets: the default (MODEL_ID, or EMBEDDING_MODEL for embeddings)
    unless it names one that ALLOWED_MODELS offers."""
    default = default or settings.model_id
    if requested is None or requested == default:
        return default
    allowed = [m.strip() for m in settings.allowed_models.split(",") if m.strip()]
    if "*" in allowed or requested in allowed:
        return requested
    offered = ", ".join([default, *allowed])
    raise ModelNotAllowed(f"model {requested!r} is not offered here; choose one of: {offered}")


def _items(text: str) -> list[str]:
    """A comma-separated setting's items."""
    return [item.strip() for item in text.split(",") if item.strip()]
