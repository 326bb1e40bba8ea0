"""Domain errors. Adapters raise these (``from`` the AWS error); handlers map them to HTTP,
and the worker maps an answer's outcomes (RequestUnusable, RateLimited, RetryLater) to SQS."""

from __future__ import annotations


class LlmStreamError(Exception):
    """Base class for errors this package raises on purpose."""


class TaskNotFound(LlmStreamError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class SessionNotFound(LlmStreamError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} not found")


class TaskAlreadyFinal(LlmStreamError):
    """The task has reached done, error or cancelled; nothing more may happen to it."""


class ClaimLost(LlmStreamError):
    """Another attempt owns the task now (a newer claim, or a chunk written at our seq)."""


class SeqConflict(ClaimLost):
    """A chunk already exists at the seq we tried to write: another writer is ahead of us."""


class StoreUnavailable(LlmStreamError):
    """The backing store could not be reached."""


class LogDiverged(StoreUnavailable):
    """The log does not end where this writer left it: seq n-1 is missing, as after a
    Redis restart that kept nothing. Continuing would leave the answer's beginning missing
    for a viewer reading from 0, so the attempt goes back to the queue and the next one
    writes the whole answer again after whatever the log now holds."""


class RequestUnusable(LlmStreamError):
    """The request can never be answered (it names no task): trying again cannot help."""


class RateLimited(LlmStreamError):
    """The shared model rate limits have no room for the answer now: start it again after
    ``delay`` seconds. Waiting for capacity is not a failed attempt."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"rate limited for {delay:.0f}s")
        self.delay = delay


class RetryLater(LlmStreamError):
    """The attempt failed for a reason that may pass (the model overloaded, a store down):
    try the answer again after ``delay`` seconds, as one more of its attempts."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(f"retry in {delay:.0f}s: {reason}")
        self.delay = delay


class QueueUnavailable(LlmStreamError):
    """The task could not be enqueued."""


class TokenMissing(LlmStreamError):
    """No stream token and no bearer: 401."""


class TokenExpired(LlmStreamError):
    """A stream token that was valid has expired: 401, and the page asks for a fresh one."""


class Unauthenticated(LlmStreamError):
    """No credentials, or credentials that do not check out: 401."""


class ApiKeyNotFound(LlmStreamError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id} not found")


class TooManyApiKeys(LlmStreamError):
    """The caller has USER_MAX_API_KEYS keys already: 409 until they revoke one."""


class Forbidden(LlmStreamError):
    """Signed in, but not allowed (operator routes for non-admins): 403."""


class AuthUnavailable(LlmStreamError):
    """The issuer's keys could not be fetched to check a token: 503."""


class QuotaExceeded(LlmStreamError):
    """The caller's own quota is spent: 429 with Retry-After."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadRequest(LlmStreamError):
    """A request that cannot be answered as it is (a tool_choice naming no tool, ...): 400,
    naming its ``param``."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status  # 404 where the field names something not found


class InputTooLarge(LlmStreamError):
    """A request over a size the deployment sets (EMBEDDINGS_MAX_INPUTS, ..._MAX_CHARS): 422."""


class TooManyStreams(QuotaExceeded):
    """The caller has USER_MAX_STREAMS streams open already: 429 with Retry-After (when the
    first of their leases could run out)."""


class ModelNotAllowed(LlmStreamError):
    """The request names a model the deployment does not offer (ALLOWED_MODELS): 422."""


class ModelUnavailable(LlmStreamError):
    """The model API refused or failed a call the api function makes itself."""


class IdempotencyConflict(LlmStreamError):
    """The Idempotency-Key was used with another body, or its first request is in flight."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
