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

Tools and structured output behave as on the real API (details in ``fake_tools.py``; what
it refuses with OpenAI's 400s, in ``fake_validation.py``). A request may carry ``tools``,
``tool_choice``, ``parallel_tool_calls`` and ``response_format``, its messages assistant
``tool_calls`` and ``role: "tool"`` results. The model calls tools only when the last
message is the user's and ``tool_choice`` is not "none": the forced function, the first
tool when "required", and with "auto" only when the last user message says
``[[fake calls=N]]`` (the first N tools in order, cycling; with a forced function or
"required", N calls of them; one at most when ``parallel_tool_calls`` is false).
``expected_calls``
computes them: ids ``call_`` + 24 hex digits from the conversation and the call's index,
arguments the compact JSON that fills the required properties of the function's schema.
Streamed as OpenAI streams them: ``{"role": "assistant", "content": null}``, then each
call's header (index, id, type, name, empty arguments) and its arguments in pieces of 4
characters paced like tokens, then finish_reason "tool_calls"; whole, a message with
``content`` null and ``tool_calls``. After tool results the text answer opens with each
one (``Based on get_weather: {"temp": 21}.``). The answer to a ``response_format``
json_schema is the JSON document that fills its schema, to json_object
``{"answer": ...}``, streamed as text in pieces of 4 characters.

Usage is counted as the real API roughly counts it: about 4 characters a token, at least
one per message or input (``text_tokens``), plus 3 per chat message for its framing, and
the tools' JSON and the assistant messages' tool calls (``prompt_tokens``); so a quota
test sees what a real model would charge. A call's arguments count a token a piece.

``/fake/conversations`` lists the message lists the model received, ``/fake/requests``
the whole request bodies (tools, tool_choice, response_format...), oldest first.
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

from localcloud import fake_tools, fake_validation

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
    calls: int = 0  # tool calls the model makes with tool_choice "auto" (see expected_calls)


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
        calls=int(fields.get("calls", base.calls)),
    )


def _last_user(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return fake_tools.content_text(message.get("content"))
    return ""


def _opener(messages: list[dict[str, Any]], last: str) -> tuple[list[str], bool]:
    """The answer's first tokens, what it answers: the tool results (True), else the prompt."""
    results = fake_tools.tool_results(messages)
    if results:
        tokens: list[str] = []
        for name, content in results:
            tokens += [" based" if tokens else "Based", " on", f" {name}:", f" {content}", ";"]
        return [*tokens[:-1], "."], True
    echo = " ".join(_DIRECTIVE.sub("", last).split()[:6])
    return (["You", " asked", ":", f' "{echo}"', "."] if echo else ["Hello", "."]), False


def answer_tokens(
    messages: list[dict[str, Any]],
    max_tokens: int | None = None,
    behaviour: Behaviour | None = None,
    response_format: dict[str, Any] | None = None,
) -> tuple[list[str], str]:
    """The answer as a list of tokens, and the finish reason ("stop" or "length").

    After tool results it opens with each of them, however few tokens the behaviour asks
    for; to a JSON ``response_format`` it is the JSON document in pieces of 4 characters."""
    last = _last_user(messages)
    behaviour = parse_directive(last, behaviour or Behaviour())
    opener, on_results = _opener(messages, last)
    structured = fake_tools.structured_text(response_format, "".join(opener))
    if structured is not None:
        tokens = fake_tools.pieces(structured)
        if max_tokens is not None and max_tokens < len(tokens):
            return tokens[:max_tokens], "length"
        return tokens, "stop"
    seed = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    rng = random.Random(seed)
    tokens = list(opener)
    since_period = 0
    while len(tokens) < behaviour.tokens:
        word = rng.choice(_WORDS)
        tokens.append(" " + (word.capitalize() if tokens[-1] == "." else word))
        since_period += 1
        if since_period >= rng.randint(6, 12) and len(tokens) < behaviour.tokens - 1:
            tokens.append(".")
            since_period = 0
    tokens = tokens[: max(behaviour.tokens, len(opener) if on_results else 0)]
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
    response_format: dict[str, Any] | None = None,
) -> str:
    return "".join(answer_tokens(messages, max_tokens, behaviour, response_format)[0])


def expected_calls(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: Any = "auto",
    parallel: bool = True,
    behaviour: Behaviour | None = None,
) -> list[dict[str, str]]:
    """The tool calls the model makes to a request, each ``{"id", "name", "arguments"}``
    (arguments whole, as JSON text); empty when it answers in text."""
    behaviour = parse_directive(_last_user(messages), behaviour or Behaviour())
    return fake_tools.plan_calls(
        messages, tools, "auto" if tool_choice is None else tool_choice, parallel, behaviour.calls
    )


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


def prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    """A chat request's prompt tokens: its messages' text and tool calls, and its tools."""
    calls = [m["tool_calls"] for m in messages if m.get("tool_calls")]
    return (
        sum(text_tokens(str(m.get("content") or "")) + MESSAGE_OVERHEAD_TOKENS for m in messages)
        + sum(text_tokens(json.dumps(c)) for c in calls)
        + (text_tokens(json.dumps(tools)) if tools else 0)
    )


def _error(
    message: str,
    status: int,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error body as the OpenAI API sends it."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
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
        if (problem := fake_validation.validate(body)) is not None:
            return _error(problem.message, 400, param=problem.param, code=problem.code)
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
        tools = body.get("tools")
        parallel = body.get("parallel_tool_calls") is not False
        calls = expected_calls(messages, tools, body.get("tool_choice"), parallel, base)
        # What streams after the role: each delta, and whether it is paced as a token.
        deltas: list[tuple[dict[str, Any], bool]]
        message: dict[str, Any]
        if calls:
            plan, finish = fake_tools.call_plan(calls, max_tokens)
            deltas = fake_tools.call_deltas(plan)
            role: dict[str, Any] = {"role": "assistant", "content": None}
            message = {**role, "tool_calls": fake_tools.tool_calls_message(plan)}
        else:
            tokens, finish = answer_tokens(messages, max_tokens, base, body.get("response_format"))
            deltas = [({"content": token}, True) for token in tokens]
            role = {"role": "assistant", "content": ""}
            message = {"role": "assistant", "content": "".join(tokens)}
        paced = sum(1 for _, is_token in deltas if is_token)
        prompt = prompt_tokens(messages, tools)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": paced,
            "total_tokens": prompt + paced,
        }
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body["model"]
        if not body.get("stream"):
            await asyncio.sleep(behave.ttft_ms / 1000 + paced / max(behave.tps, 1e-6))
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "finish_reason": finish, "logprobs": None, "message": message}
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
            yield chunk(role)
            i = 0
            for delta, is_token in deltas:
                if is_token:
                    # Paced against the start, so the rate holds however slow the reader is.
                    due = start + behave.ttft_ms / 1000 + i / max(behave.tps, 1e-6)
                    if (delay := due - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                    i += 1
                yield chunk(delta)
                if is_token:
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
