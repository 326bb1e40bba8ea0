"""Retry policy: which failures of an answer are worth another try, and how long to wait."""

from __future__ import annotations

from openai import APIConnectionError, APIStatusError, APITimeoutError, RateLimitError

from llmstream.settings import Settings


def transient(error: Exception) -> bool:
    """Worth another try later: overload, rate limits, server errors, timeouts."""
    if isinstance(error, (APIConnectionError, APITimeoutError, RateLimitError)):
        return True
    return isinstance(error, APIStatusError) and error.status_code >= 500


def backoff(settings: Settings, receive_count: int) -> float:
    """Seconds before the next attempt: doubling from the base, capped."""
    return float(
        min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (receive_count - 1))
    )


def describe(error: Exception) -> str:
    """A model error as its status and message, for the task row and the error event."""
    status = getattr(error, "status_code", None)
    text = str(error) or type(error).__name__
    return f"{status} {text}" if status else text
