"""The model: an OpenAI client and a streamed chat completion as text pieces and usage."""

from __future__ import annotations

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


def prompt(tasks: TaskStore, settings: Settings, task: Task) -> list[dict[str, str]]:
    """A worker's prompt for ``task``: the system text, the session's earlier turns that
    fit the history budget (none to look up for a new session), the message."""
    budget = settings.history_token_budget
    fetch = budget and not task.new_session
    history = tasks.session(task.owner, task.session_id) if fetch else []
    return build_messages(task, history, budget)


def build_messages(
    task: Task, history: list[Task] | None = None, token_budget: int = 0
) -> list[dict[str, str]]:
    """System prompt, the session's earlier finished turns that fit the token budget
    (newest kept first), then this message."""
    turns: list[dict[str, str]] = []
    spent = 0
    for earlier in reversed(history or []):
        if earlier.task_id == task.task_id or earlier.created_at >= task.created_at:
            continue
        if earlier.status != "done" or not earlier.answer:
            continue
        cost = (len(earlier.message) + len(earlier.answer)) // 4 + 8
        if spent + cost > token_budget:
            break
        spent += cost
        turns[:0] = [
            {"role": "user", "content": earlier.message},
            {"role": "assistant", "content": earlier.answer},
        ]
    messages = [{"role": "system", "content": task.system}] if task.system else []
    return [*messages, *turns, {"role": "user", "content": task.message}]


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: why it stopped and what it used."""

    usage: dict[str, Any] | None
    finish_reason: str | None


def open_stream(
    client: OpenAI, task: Task, messages: list[dict[str, str]]
) -> Stream[ChatCompletionChunk]:
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
    return cast("Stream[ChatCompletionChunk]", client.chat.completions.create(**kwargs))


def pieces(stream: Stream[ChatCompletionChunk]) -> Iterator[str | Finished]:
    """Yield text pieces as the model produces them, then one Finished."""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    with stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.model_dump(exclude_none=True)
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
    yield Finished(usage=usage, finish_reason=finish_reason)
