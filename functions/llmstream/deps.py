"""Clients and stores, built once per process from Settings (the Lambda cold start).

Core code takes these as arguments, so tests hand it emulator-backed clients; AWS endpoints
come from the standard variables (AWS_ENDPOINT_URL, ...), which boto3 honours by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from llmstream import vault
from llmstream.chunklog.base import ChunkLog
from llmstream.chunklog.dynamodb import DynamoDBChunkLog
from llmstream.leases import StreamLeases
from llmstream.limits import ModelLimits, TokenBuckets, UserQuotas
from llmstream.sessions import SessionStore
from llmstream.settings import Settings, get_settings
from llmstream.tasks import TaskStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient
    from openai import OpenAI

    from llmstream.api_keys import ApiKeyStore

# Short timeouts: every call here is a single-item operation; a stuck connection must fail
# fast and be retried by botocore's standard mode, not hold a request for a minute.
_BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=3,
    read_timeout=10,
    max_pool_connections=64,
)


@dataclass
class Deps:
    settings: Settings
    dynamodb: DynamoDBClient
    sqs: SQSClient
    tasks: TaskStore
    sessions: SessionStore
    log: ChunkLog
    limits: ModelLimits
    quotas: UserQuotas
    leases: StreamLeases
    _openai: OpenAI | None = field(default=None, repr=False)
    _api_keys: ApiKeyStore | None = field(default=None, repr=False)

    @property
    def token_key(self) -> str:
        """The HMAC key of stream tokens (Secrets Manager, cached per process)."""
        return vault.stream_token_key(self.settings)

    @property
    def openai(self) -> OpenAI:
        # Built on first use: only the worker calls the model, and the OpenAI client
        # refuses to start without a key.
        if self._openai is None:
            from llmstream.llm import make_client

            self._openai = make_client(self.settings)
        return self._openai

    @property
    def api_keys(self) -> ApiKeyStore | None:
        """Personal API keys (the api's /keys routes), or None without API_KEYS_TABLE.
        Built on first use: only the api function lists and creates keys."""
        if self._api_keys is None and self.settings.api_keys_table:
            from llmstream.api_keys import ApiKeyStore

            self._api_keys = ApiKeyStore(
                self.settings.api_keys_table, self.dynamodb, self.settings.user_max_api_keys
            )
        return self._api_keys


def build_deps(
    settings: Settings,
    *,
    dynamodb: DynamoDBClient | None = None,
    sqs: SQSClient | None = None,
    openai: OpenAI | None = None,
) -> Deps:
    ddb = dynamodb or boto3.client("dynamodb", config=_BOTO_CONFIG)
    buckets = TokenBuckets(settings.rate_limit_table, ddb)
    return Deps(
        settings=settings,
        dynamodb=ddb,
        sqs=sqs or boto3.client("sqs", config=_BOTO_CONFIG),
        tasks=TaskStore(settings.requests_table, ddb, settings.retention_seconds),
        sessions=SessionStore(settings.sessions_table, ddb, settings.retention_seconds),
        log=make_chunklog(settings, ddb),
        limits=ModelLimits(buckets, settings.llm_rpm, settings.llm_tpm),
        quotas=UserQuotas(
            buckets,
            ddb,
            settings.rate_limit_table,
            requests_per_minute=settings.user_rpm,
            tokens_per_day=settings.user_tokens_per_day,
        ),
        leases=StreamLeases(
            settings.rate_limit_table,
            ddb,
            max_streams=settings.user_max_streams,
            lease_seconds=settings.stream_lease_seconds,
        ),
        _openai=openai,
    )


def make_chunklog(settings: Settings, dynamodb: DynamoDBClient) -> ChunkLog:
    if settings.chunklog_backend == "dynamodb":
        return DynamoDBChunkLog(settings.chunks_table, dynamodb, settings.retention_seconds)
    if settings.chunklog_backend == "redis" and settings.redis_url:
        from llmstream.chunklog.redis import RedisChunkLog  # only where it is used

        return RedisChunkLog(
            settings.redis_url, settings.retention_seconds, prefix=settings.redis_key_prefix
        )
    raise ValueError(f"unknown chunk-log backend {settings.chunklog_backend!r}")


@lru_cache(maxsize=1)
def get_deps() -> Deps:
    return build_deps(get_settings())
