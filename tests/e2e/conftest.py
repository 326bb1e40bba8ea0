from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmstream.limits import prompt_tokens
from localcloud.up import Options, Ports, Stack
from localcloud.users import LocalUser
from tests.conftest import ARTIFACTS, app_openapi, unique

# Where the stacks' AWS services run: `./run.sh test --aws TARGET` (moto by default). With
# "external", the standard AWS_ENDPOINT_URL variables say where (each stack's resources
# are named after it, apart from anything else there).
AWS_TARGET = os.environ.get("LLMSTREAM_AWS") or "moto"
# On the targets with emulators of their own besides moto (LocalStack, DynamoDB Local), the
# stacks of a test session share one set, started once (each stack's resources are named
# after it, as they would be in one account): the endpoints' variables.
SHARED_AWS: dict[str, str] = {}
FAKE_TOKENS = 40
DEFAULT_USER = "e2e-user"
_users: dict[tuple[str, str, bool], LocalUser] = {}
# A chat request of the token-quota stack: a new conversation, at most ANSWER_TOKENS of
# answer, and an answer of exactly that many that takes 5 s (so all are in flight at once).
ANSWER_TOKENS = 50
SLOW = f"[[fake tokens={ANSWER_TOKENS} tps=10]]"
# What admission reserves for one (~4 characters a token, the framing, its max_tokens).
RESERVED = prompt_tokens([f"q00 {SLOW}"]) + ANSWER_TOKENS
DAILY = 3 * RESERVED + RESERVED // 2  # fits 3 of them, and half of a fourth


def user(stack: Stack, name: str = DEFAULT_USER, *, admin: bool = False) -> LocalUser:
    """A signed-in user of the stack's pool (created on first use; tokens last an hour)."""
    key = (stack.opts.stack, name, admin)
    if key not in _users:
        _users[key] = stack.ensure_user(name, admin=admin)
    return _users[key]


def auth(stack: Stack, name: str = DEFAULT_USER, *, admin: bool = False) -> dict[str, str]:
    """The Authorization header of ``name`` on ``stack``."""
    return user(stack, name, admin=admin).headers


def described(stack: Stack, app: str) -> dict[str, Any]:
    """The OpenAPI description of ``app`` ("api" or "stream") of the stack: the api serves
    its own; the stream function URL serves none (it is public), so its description is
    built in-process from the same app."""
    if app == "stream":
        return app_openapi("llmstream.stream")
    spec: dict[str, Any] = httpx.get(f"{stack.urls[app]}/openapi.json", timeout=10).json()
    return spec


def stack_options(name: str, **overrides: Any) -> Options:
    """A stack of the tests' own: unique name, free ports, a fast fake model."""
    defaults: dict[str, Any] = {
        "aws": "external" if SHARED_AWS else AWS_TARGET,
        "external_env": dict(SHARED_AWS) if SHARED_AWS else None,
        "workers": 4,
        "fake_tps": 100.0,
        "fake_ttft_ms": 50.0,
        "state_dir": ARTIFACTS / f"{name}-stack",
    }
    return Options(stack=unique(name), ports=Ports.free(), **{**defaults, **overrides})


@pytest.fixture(scope="session", autouse=True)
def shared_emulators() -> Iterator[None]:
    """LocalStack and DynamoDB Local (or DynamoDB Local beside moto) once for the session."""
    if AWS_TARGET not in ("localstack", "dynamodb-local"):
        yield
        return
    emulators = Stack(
        Options(
            stack=unique("e2e-aws"),
            ports=Ports.free(),
            aws=AWS_TARGET,
            state_dir=ARTIFACTS / "e2e-aws-stack",
        )
    )
    emulators.start_aws()
    SHARED_AWS.update(emulators.aws_env)
    try:
        yield
    finally:
        SHARED_AWS.clear()
        emulators.stop()


@pytest.fixture(scope="session")
def local_stack() -> Iterator[Stack]:
    """The whole local stack, started as `./run.sh start` starts it, on free ports."""
    opts = stack_options(
        "e2e",
        fake_tokens=FAKE_TOKENS,
        # Small embedding batches, so a test can see POST /embeddings split its input.
        extra_env={"EMBEDDINGS_BATCH_SIZE": "2"},
    )
    stack = Stack(opts)
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def redis_stack() -> Iterator[Stack]:
    """The whole local stack with the Redis Streams chunk log (`--chunk-log redis`)."""
    opts = stack_options("e2e-redis", fake_tokens=FAKE_TOKENS, chunk_log="redis")
    stack = Stack(opts)
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def token_quota_stack() -> Iterator[Stack]:
    """A stack whose users may spend DAILY model tokens a day, and no request quota: one
    for the session, shared by the quota tests of /chat, /embeddings (test_users.py) and
    /v1 (test_v1_chat.py, which runs next)."""
    extra = {"USER_RPM": "0", "USER_TOKENS_PER_DAY": str(DAILY), "EMBEDDINGS_BATCH_SIZE": "2"}
    stack = Stack(stack_options("e2e-tokens", extra_env=extra))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(params=["dynamodb", "redis"])
def chat_stack(request: pytest.FixtureRequest) -> Stack:
    """The stack on each chunk-log backend, for the tests of what the chunk log carries."""
    name = "local_stack" if request.param == "dynamodb" else "redis_stack"
    stack: Stack = request.getfixturevalue(name)
    return stack
