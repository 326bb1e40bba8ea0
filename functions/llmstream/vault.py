"""Secrets, read from Secrets Manager once per cold start (Powertools Parameters) and kept.

Never plain environment variables in the cloud: the template passes secret ARNs only.
"""

from __future__ import annotations

from functools import lru_cache

from aws_lambda_powertools.utilities import parameters

from llmstream.settings import Settings


@lru_cache(maxsize=8)
def read_secret(arn: str) -> str:
    value = parameters.get_secret(arn)
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def stream_token_key(settings: Settings) -> str:
    if settings.stream_token_secret is not None:
        return settings.stream_token_secret.get_secret_value()
    assert settings.stream_token_secret_arn is not None  # the settings validator ensures it
    return read_secret(settings.stream_token_secret_arn)


def openai_api_key(settings: Settings) -> str | None:
    """The key from Secrets Manager, or None to let the SDK read OPENAI_API_KEY."""
    if settings.openai_api_key_secret_arn is None:
        return None
    return read_secret(settings.openai_api_key_secret_arn)
