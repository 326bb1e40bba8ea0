"""The model: an OpenAI client and a streamed chat completion as text pieces and usage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from openai import OpenAI

from llmstream import vault
from llmstream.settings import Settings
from llmstream.tasks import Task

if TYPE_CHECKING:
    from openai import Stream
    from openai.types.chat import ChatCompletionChunk


def make_client(settings: Settings) -> OpenAI:
    # The key from Secrets Manager (or OPENAI_API_KEY); OPENAI_BASE_URL as the SDK reads it.
    # The SDK's own retries handle 429 (with Retry-After), 5xx and timeouts with backoff.
    return OpenAI(
        api_key=vault.openai_api_key(settings),
        max_retries=settings.openai_max_retries,
        timeout=settings.openai_timeout_seconds,
    )


def build_messages(task: Task) -> list[dict[str, str]]:
    messages = []
    if task.system:
        messages.append({"role": "system", "content": task.system})
    messages.append({"role": "user", "content": task.message})
    return messages


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: why it stopped and what it used."""

    usage: dict[str, Any] | None
    finish_reason: str | None


def open_stream(client: OpenAI, task: Task) -> Stream[ChatCompletionChunk]:
    """Start a streamed chat completion; ``close()`` on the result stops the model call."""
    kwargs: dict[str, Any] = {
        "model": task.model,
        "messages": build_messages(task),
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
