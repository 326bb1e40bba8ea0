"""Signed, expiring stream tokens bound to one task.

A stream is readable only with the token POST /chat returned. The token is
``<expiry>.<signature>`` where the signature is HMAC-SHA256 over the task id and expiry, so
the stream function needs no lookup to check it and a token for one task opens no other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from llmstream.exceptions import TokenInvalid, TokenMissing


def _signature(secret: str, task_id: str, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"{task_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def sign(secret: str, task_id: str, ttl_seconds: int, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl_seconds)
    return f"{expires}.{_signature(secret, task_id, expires)}"


def verify(secret: str, task_id: str, token: str | None, now: float | None = None) -> None:
    """Raise TokenMissing or TokenInvalid unless ``token`` opens ``task_id`` now."""
    if not token:
        raise TokenMissing("stream token missing: pass ?token= from the stream_url")
    expires_text, _, signature = token.partition(".")
    if not expires_text.isdigit() or not signature:
        raise TokenInvalid("stream token malformed")
    expires = int(expires_text)
    if not hmac.compare_digest(signature, _signature(secret, task_id, expires)):
        raise TokenInvalid("stream token does not match this task")
    if expires < (time.time() if now is None else now):
        raise TokenInvalid("stream token expired")
