"""Signed, short-lived stream tokens bound to one task and its owner.

A stream is readable only with a token the api function gave the task's owner (POST /chat,
or GET /chat/{task_id} for a fresh one). The token is ``<expiry>.<signature>``, the
signature HMAC-SHA256 over the task id, the owner's ``sub`` and the expiry: the stream
function checks it against the task row it reads anyway, so a token opens no other task
and no other user's, and carries nothing about the user in the URL.

A token that does not open the task is answered as a task that does not exist (404); one
that did but has expired is 401, so the page knows to ask for a fresh one.

``StreamTokenVerifier`` is the token as a ``Verifier`` (auth.py) of one task: the stream
function asks it who is calling when the request carries ``?token=``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from llmstream.auth import Principal
from llmstream.exceptions import TaskNotFound, TokenExpired, TokenMissing

_EXPIRES = re.compile(r"[0-9]{1,12}")


def _signature(secret: str, task_id: str, owner: str, expires: int) -> str:
    message = f"{task_id}\n{owner}\n{expires}".encode()
    mac = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def sign(secret: str, task_id: str, owner: str, ttl_seconds: int, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl_seconds)
    return f"{expires}.{_signature(secret, task_id, owner, expires)}"


def verify(
    secret: str, task_id: str, owner: str, token: str | None, now: float | None = None
) -> None:
    """Raise TokenMissing, TaskNotFound or TokenExpired unless ``token`` opens ``task_id``
    of ``owner`` now."""
    if not token:
        raise TokenMissing("sign in: pass ?token= from the stream_url, or a Bearer token")
    expires_text, _, signature = token.partition(".")
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    if not _EXPIRES.fullmatch(expires_text) or not signature:
        raise TaskNotFound(task_id)
    expires = int(expires_text)
    expected = _signature(secret, task_id, owner, expires)
    # As bytes: compare_digest refuses a str with non-ASCII characters (a TypeError, a 500).
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise TaskNotFound(task_id)
    if expires < (time.time() if now is None else now):
        raise TokenExpired("stream token expired: GET /chat/{task_id} gives a fresh stream_url")


class StreamTokenVerifier:
    """Stream tokens of one task: a valid one is its owner calling (for that task alone).

    Built per request from the task's row, as the token carries no user: one of another
    task or another owner, or a forged one, is TaskNotFound (404); an expired one of this
    task is TokenExpired (401)."""

    def __init__(self, secret: str, task_id: str, owner: str) -> None:
        self._secret = secret
        self._task_id = task_id
        self._owner = owner

    def accepts(self, bearer: str) -> bool:
        return bearer.count(".") == 1  # ``<expiry>.<signature>``; a JWT has two dots

    def verify(self, bearer: str) -> Principal:
        verify(self._secret, self._task_id, self._owner, bearer)
        return Principal(sub=self._owner, username="", groups=frozenset(), via="stream_token")
