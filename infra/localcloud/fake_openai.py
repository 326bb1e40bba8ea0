"""A fake OpenAI server that speaks the real wire protocol, for runs without a key.

``/v1/chat/completions`` (streamed as ``data: {chunk}`` lines ending in ``data: [DONE]``,
usage on request, or one JSON body) and ``/v1/models``; used through the real ``openai``
SDK by pointing ``OPENAI_BASE_URL`` here. Answers are deterministic: the text derives from
the conversation, so tests can compute the exact answer with ``expected_answer``.

Timing is set per server (time to first token, tokens per second) and can be overridden
per request by a directive in the last user message, e.g. ``[[fake tokens=200 tps=20]]``
(``status=500`` makes it fail that request, to test the error path; ``hang_ms=30000``
makes the first request of a conversation wait that long before it answers at all, as a
model endpoint that hangs once). An embeddings input with ``status=...`` fails its batch.

Usage is counted as the real API roughly counts it: about 4 characters a token, at least
one per message or input (``text_tokens``), plus 3 per chat message for its framing; so a
quota test sees what a real model would charge.

``/fake/conversations`` lists the message lists the model received, ``/fake/requests``
the whole request bodies, oldest first.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

_VOCABULARY = """
the stream arrives in small pieces while the worker writes each chunk to the log and
every viewer reads it back in order a queue holds the request until a function picks it
up so the answer survives a dropped connection and resumes from the last event id with
nothing lost and nothing repeated serverless functions scale to zero when idle and wake
when work appears tokens flow from the model through the pipeline to the browser
"""
_WORDS = tuple(_VOCABULARY.split())
_DIRECTIVE = re.compile(r"\[\[fake([^\]]*)\]\]")


@dataclass(frozen=True)
class Behaviour:
    tokens: int = 60  # answer length in tokens (capped by max_tokens)
    tps: float = 50.0  # tokens per second after the first
    ttft_ms: float = 200.0  # time to first token
    status: int = 200  # answer every request with this HTTP error instead (e.g. 500, 429)
    hang_ms: float = 0.0  # the first request of a conversation: no answer for this long


def parse_directive(text: str, base: Behaviour) -> Behaviour:
    match = _DIRECTIVE.search(text)
    if not match:
        return base
    fields = dict(kv.split("=", 1) for kv in match.group(1).split() if "=" in kv)
    return replace(
        base,
        tokens=int(fields.get("tokens", base.tokens)),
        tps=float(fields.get("tps", base.tps)),
        ttft_ms=float(fields.get("ttft_ms", base.ttft_ms)),
        status=int(fields.get("status", base.status)),
        hang_ms=float(fields.get("hang_ms", base.hang_ms)),
    )


def _last_user(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def answer_tokens(
    messages: list[dict[str, Any]],
    max_tokens: int | None = None,
    behaviour: Behaviour | None = None,
) -> tuple[list[str], str]:
    """The answer as a list of tokens, and the finish reason ("stop" or "length")."""
    last = _last_user(messages)
    behaviour = parse_directive(last, behaviour or Behaviour())
    seed = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    rng = random.Random(seed)
    prompt_words = _DIRECTIVE.sub("", last).split()[:6]
    echo = " ".join(prompt_words)
    tokens = ["You", " asked", ":", f' "{echo}"', "."] if echo else ["Hello", "."]
    since_period = 0
    while len(tokens) < behaviour.tokens:
        word = rng.choice(_WORDS)
        tokens.append(" " + (word.capitalize() if tokens[-1] == "." else word))
        since_period += 1
        if since_period >= rng.randint(6, 12) and len(tokens) < behaviour.tokens - 1:
            tokens.append(".")
            since_period = 0
    tokens = tokens[: behaviour.tokens]
    if max_tokens is not None and max_tokens < len(tokens):
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def request_key(messages: list[dict[str, Any]]) -> str:
    """Names one conversation: the benchmark asks for its token emission times by it."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:24]


def expected_answer(
    messages: list[dict[str, Any]],
    max_tokens: int | None = None,
    behaviour: Behaviour | None = None,
) -> str:
    return "".join(answer_tokens(messages, max_tokens, behaviour)[0])


EMBEDDING_DIMENSIONS = 16
EMBEDDING_BATCH_LIMIT = 2048  # OpenAI's limit on inputs per request


def fake_embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    rng = random.Random(digest)
    raw = [rng.uniform(-1, 1) for _ in range(dimensions)]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [v / norm for v in raw]


def text_tokens(text: str) -> int:
    """A text's tokens as the model APIs roughly count them: ~4 characters a token, at least 1."""
    return max(1, -(-len(text) // 4))


MESSAGE_OVERHEAD_TOKENS = 3  # each chat message's role and framing, as OpenAI counts them


def _count(messages: list[dict[str, Any]]) -> int:
    return sum(text_tokens(str(m.get("content") or "")) + MESSAGE_OVERHEAD_TOKENS for m in messages)


def _error(
    message: str,
    status: int,
    *,
    kind: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error body as the OpenAI API sends it."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}},
        status_code=status,
        headers=headers,
    )


def create_app(behaviour: Behaviour | None = None) -> FastAPI:
    base = behaviour or Behaviour()
    app = FastAPI(title="fake OpenAI")
    app.state.requests = 0
    app.state.embedding_requests = 0
    app.state.emissions = {}
    # The conversations the model was sent (newest last, bounded): tests check what reached
    # the model, e.g. that one user's history never goes out with another user's request.
    app.state.conversations = collections.deque(maxlen=2000)
    app.state.bodies = collections.deque(maxlen=2000)  # the whole requests, likewise
    app.state.hung = set()  # the conversations that have had their hang

    def _auth_error(request: Request) -> JSONResponse | None:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return _error("missing API key", 401, code="invalid_api_key")
        return None

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if (err := _auth_error(request)) is not None:
            return err
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "llmstream-fake"}
                for m in ("gpt-4o-mini", "gpt-4o", "fake-model")
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/fake/stats")
    async def fake_stats() -> dict[str, int]:
        """How many calls the fake served: lets tests see batching and retries."""
        return {
            "chat_requests": app.state.requests,
            "embedding_requests": app.state.embedding_requests,
        }

    @app.get("/fake/conversations")
    async def conversations() -> dict[str, Any]:
        """The message lists of the chat requests received, oldest first."""
        return {"conversations": list(app.state.conversations)}

    @app.get("/fake/requests")
    async def requests() -> dict[str, Any]:
        """The whole bodies of the chat requests received (tools, response_format...)."""
        return {"requests": list(app.state.bodies)}

    @app.get("/fake/emissions/{key}")
    async def emissions(key: str) -> Any:
        """When each token of the streamed answer to one conversation left this server."""
        times = app.state.emissions.get(key)
        return {"times": times} if times is not None else _error("unknown request key", 404)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        if (err := _auth_error(request)) is not None:
            return err
        body = await request.json()
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or "model" not in body:
            return _error("'input' and 'model' are required", 400)
        if len(inputs) > EMBEDDING_BATCH_LIMIT:
            return _error(f"at most {EMBEDDING_BATCH_LIMIT} inputs per request", 400)
        app.state.embedding_requests += 1
        failing = [
            b.status for t in inputs if (b := parse_directive(str(t), Behaviour())).status != 200
        ]
        if failing:  # a directive in an input fails its whole batch, as a model error would
            return _error(
                f"fake failure {failing[0]}",
                failing[0],
                kind="server_error",
                headers={"retry-after-ms": "10"},
            )
        tokens = sum(text_tokens(str(text)) for text in inputs)
        return {
            "object": "list",
            "model": body["model"],
            "data": [
                {"object": "embedding", "index": i, "embedding": fake_embedding(str(t))}
                for i, t in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        if (err := _auth_error(request)) is not None:
            return err
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or "model" not in body:
            return _error("'messages' and 'model' are required", 400)
        app.state.requests += 1
        app.state.conversations.append(messages)
        app.state.bodies.append(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        behave = parse_directive(_last_user(messages), base)
        if behave.hang_ms and (key := request_key(messages)) not in app.state.hung:
            app.state.hung.add(key)
            await asyncio.sleep(behave.hang_ms / 1000)  # not even the response headers
        if behave.status != 200:
            return _error(
                f"fake failure {behave.status}",
                behave.status,
                kind="server_error",
                headers={"retry-after-ms": "10"},
            )
        tokens, finish = answer_tokens(messages, max_tokens, base)
        usage = {
            "prompt_tokens": _count(messages),
            "completion_tokens": len(tokens),
            "total_tokens": _count(messages) + len(tokens),
        }
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body["model"]
        if not body.get("stream"):
            await asyncio.sleep(behave.ttft_ms / 1000 + len(tokens) / max(behave.tps, 1e-6))
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": finish,
                        "logprobs": None,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                    }
                ],
                "usage": usage,
            }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
                ],
            }
            return f"data: {json.dumps(payload)}\n\n"

        # Wall-clock emission time of every token, for the benchmark's per-chunk delay.
        emitted: list[float] = []
        app.state.emissions[request_key(messages)] = emitted
        while len(app.state.emissions) > 10_000:
            app.state.emissions.pop(next(iter(app.state.emissions)))

        async def events() -> AsyncIterator[str]:
            start = time.monotonic()
            await asyncio.sleep(behave.ttft_ms / 1000)
            yield chunk({"role": "assistant", "content": ""})
            for i, token in enumerate(tokens):
                # Paced against the start, so the rate holds however slow the reader is.
                due = start + behave.ttft_ms / 1000 + i / max(behave.tps, 1e-6)
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                yield chunk({"content": token})
                emitted.append(time.time())
            yield chunk({}, finish)
            if include_usage:
                payload = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
