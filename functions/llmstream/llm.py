"""The model: an OpenAI client and a streamed chat completion as text pieces and usage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from openai import AsyncOpenAI, OpenAI

from llmstream import vault
from llmstream.settings import Settings
from llmstream.tasks import Task, TaskStore

if TYPE_CHECKING:
    from openai import AsyncStream, Stream
    from openai.types.chat import ChatCompletionChunk


def make_client(settings: Settings) -> OpenAI:
    # The key from Secrets Manager (or OPENAI_API_KEY); OPENAI_BASE_URL as the SDK reads it.
    # The SDK's own retries handle 429 (with Retry-After), 5xx and timeouts with backoff.
    return OpenAI(
        api_key=vault.openai_api_key(settings),
        max_retries=settings.openai_max_retries,
        timeout=settings.openai_timeout_seconds,
    )


def make_async_client(settings: Settings) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key=vault.openai_api_key(settings),
        max_retries=settings.openai_max_retries,
        timeout=settings.openai_timeout_seconds,
    )


async def direct_pieces(client: AsyncOpenAI, task: Task) -> AsyncIterator[str]:
    """Direct mode: the answer's text straight from the model, no queue and no log."""
    kwargs: dict[str, Any] = {"model": task.model, "messages": build_messages(task), "stream": True}
    if task.max_tokens is not None:
        kwargs["max_tokens"] = task.max_tokens
    if task.temperature is not None:
        kwargs["temperature"] = task.temperature
    stream = cast(
        "AsyncStream[ChatCompletionChunk]", await client.chat.completions.create(**kwargs)
    )
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content


Message = dict[str, Any]


def prompt(tasks: TaskStore, settings: Settings, task: Task) -> list[Message]:
    """A worker's prompt for ``task``: the system text, the session's earlier turns that
    fit the history budget (none to look up for a new session), the message."""
    budget = settings.history_token_budget
    fetch = budget and not task.new_session
    history = tasks.session(task.owner, task.session_id) if fetch else []
    return build_messages(task, history, budget)


def build_messages(
    task: Task, history: list[Task] | None = None, token_budget: int = 0
) -> list[Message]:
    """System prompt, the session's earlier finished turns that fit the token budget
    (newest kept first), then this request's messages (its message, or the conversation
    an OpenAI-style request sent, tool results included)."""
    turns: list[Message] = []
    spent = 0
    for earlier in reversed(history or []):
        if earlier.task_id == task.task_id or earlier.created_at >= task.created_at:
            continue
        if earlier.status != "done" or not (earlier.answer or earlier.calls):
            continue
        said = [*_said(earlier), _answered(earlier)]
        cost = sum(len(json.dumps(m)) for m in said) // 4 + 8
        if spent + cost > token_budget:
            break
        spent += cost
        turns[:0] = said
    messages = [{"role": "system", "content": task.system}] if task.system else []
    return [*messages, *turns, *_said(task)]


def _said(task: Task) -> list[Message]:
    """What a turn sent: its conversation (v1/), or its one user message."""
    return (
        [dict(m) for m in task.input] if task.input else [{"role": "user", "content": task.message}]
    )


def _answered(task: Task) -> Message:
    """What a finished turn answered: its text, and the function calls it made."""
    message: Message = {"role": "assistant", "content": task.answer or None}
    if task.calls:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in json.loads(task.calls)
        ]
    return message


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: why it stopped and what it used."""

    usage: dict[str, Any] | None
    finish_reason: str | None


@dataclass(frozen=True)
class CallStarted:
    """The model starts a function call."""

    call_id: str
    name: str


@dataclass(frozen=True)
class Arguments:
    """More of the current function call's arguments."""

    delta: str


def open_stream(client: OpenAI, task: Task, messages: list[Message]) -> Stream[ChatCompletionChunk]:
    """Start a streamed chat completion; ``close()`` on the result stops the model call."""
    kwargs: dict[str, Any] = {
        "model": task.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if task.max_tokens is not None:
        kwargs["max_tokens"] = task.max_tokens
    if task.temperature is not None:
        kwargs["temperature"] = task.temperature
    if task.top_p is not None:
        kwargs["top_p"] = task.top_p
    # Tools and structured output, as the request gave them (OpenAI's Chat Completions
    # shapes, kept as JSON on the row).
    if task.tools:
        kwargs["tools"] = json.loads(task.tools)
        if task.tool_choice:
            kwargs["tool_choice"] = json.loads(task.tool_choice)
        if task.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = task.parallel_tool_calls
    if task.response_format:
        kwargs["response_format"] = json.loads(task.response_format)
    return cast("Stream[ChatCompletionChunk]", client.chat.completions.create(**kwargs))


Piece = str | CallStarted | Arguments | Finished


def pieces(stream: Stream[ChatCompletionChunk]) -> Iterator[Piece]:
    """Yield text pieces and function calls as the model produces them, then one Finished.
    A call's start comes once per call index, with its id and name; its arguments follow
    (OpenAI streams the calls of one answer one after another)."""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    started: set[int] = set()
    with stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.model_dump(exclude_none=True)
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content
                for call in choice.delta.tool_calls or ():
                    function = call.function
                    if call.index not in started:
                        started.add(call.index)
                        name = (function.name if function else None) or ""
                        yield CallStarted(call.id or f"call_{call.index}", name)
                    if function is not None and function.arguments:
                        yield Arguments(function.arguments)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
    yield Finished(usage=usage, finish_reason=finish_reason)
