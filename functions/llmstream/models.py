"""The wire contract (DESIGN.md): request and response bodies, and chunk-log events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmstream.tool_specs import (
    ChatJsonSchemaFormat,
    ChatTool,
    JsonObjectFormat,
    Mode,
    NamedChatChoice,
    TextFormat,
    format_for_model,
    tools_for_model,
)

# waiting: back on its queue for a while (model overloaded or rate limited), then retried.
TaskState = Literal["queued", "waiting", "running", "done", "error", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"done", "error", "cancelled"})

# chunk: answer text; call: a function call starts (id, name); args: its arguments, more of
# them; a call ends where the next item starts or the answer ends.
EventKind = Literal["chunk", "call", "args", "reset", "done", "error", "cancelled"]
TERMINAL_KINDS: frozenset[str] = frozenset({"done", "error", "cancelled"})

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
PRIORITY_MAX = 10  # a request's priority is -10 (low) .. 10 (high)


class ToolResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1, max_length=128)
    output: str = Field(max_length=100_000)


class ChatRequest(BaseModel):
    """Body of POST /chat."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # Before the message: the message is checked knowing them (it may be empty with them).
    tool_results: list[ToolResult] | None = Field(
        default=None, max_length=128, description="Outputs of the last answer's calls"
    )
    message: str = Field(
        default="", max_length=32_000, validate_default=True, description="The user's message"
    )
    session_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="One of your conversations (from a 202 or GET /sessions); a new one if absent",
    )
    priority: int = Field(
        default=0, ge=-PRIORITY_MAX, le=PRIORITY_MAX, description="-10 (low) .. 10 (high)"
    )
    model: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._:/-]{1,128}$", description="Model id override"
    )
    system: str | None = Field(default=None, max_length=8_000, description="System prompt")
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    cancel_on_disconnect: bool = Field(
        default=False,
        description="Stop the answer when its last viewer disconnects (default: it goes on, "
        "to be resumed)",
    )
    # Agents: function tools the model may call (its calls stream as `call` and `args`
    # events), and the results of the calls the conversation's last answer made.
    tools: list[ChatTool] | None = Field(default=None, description="Function tools")
    tool_choice: Mode | NamedChatChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JsonObjectFormat | ChatJsonSchemaFormat | None = Field(
        default=None, description="Structured output: the answer as JSON (of a schema)"
    )

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        if not value and not info.data.get("tool_results"):
            raise ValueError("message must not be blank (unless tool_results are sent)")
        return value

    @model_validator(mode="after")
    def _results_continue(self) -> ChatRequest:
        if self.tool_results and not self.session_id:
            raise ValueError("tool_results continue a conversation: send its session_id")
        return self

    def task_fields(self) -> dict[str, Any]:
        """The Task fields beyond its message: the conversation it sends when it carries
        tool results, and its tools and answer format (tool_specs.py)."""
        fields = {
            **tools_for_model(self.tools, self.tool_choice, self.parallel_tool_calls),
            **format_for_model(self.response_format),
        }
        if self.tool_results:
            said = [{"role": "user", "content": self.message}] if self.message else []
            results = [
                {"role": "tool", "tool_call_id": r.call_id, "content": r.output}
                for r in self.tool_results
            ]
            fields["input"] = [*results, *said]
        return fields


class ChatAccepted(BaseModel):
    """202 answer of POST /chat."""

    status: Literal["queued"] = "queued"
    task_id: str
    session_id: str
    stream_url: str


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TaskStatus(BaseModel):
    """GET /chat/{task_id}: where a task is, and the text it has produced so far."""

    task_id: str
    session_id: str
    status: TaskState
    model: str
    text: str = Field(description="Answer text so far (all chunks of the latest attempt)")
    calls: list[dict[str, str]] = Field(
        default_factory=list, description="Function calls so far: id, name, arguments"
    )
    usage: Usage | None = None
    error: str | None = None
    attempt: int = 0
    cancel_requested: bool = False
    retry_at: float | None = None
    created_at: float
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    last_seq: int = Field(0, description="Seq of the newest chunk-log event")
    heartbeat_at: float | None = Field(None, description="The running worker's last beat")
    worker_lost: bool = Field(
        False, description="Running, but its worker went silent: a new attempt is coming"
    )
    stream_url: str = Field(description="A fresh signed URL of the task's stream")


class SessionTurn(BaseModel):
    task_id: str
    status: TaskState
    message: str
    answer: str | None = Field(None, description="The answer, once done")
    calls: list[dict[str, str]] = Field(
        default_factory=list, description="The function calls the answer made, once done"
    )
    usage: Usage | None = None
    created_at: float
    finished_at: float | None = None


class SessionHistory(BaseModel):
    """GET /sessions/{session_id}: a conversation's turns, oldest first."""

    session_id: str
    turns: list[SessionTurn]


class SessionSummary(BaseModel):
    session_id: str
    title: str = Field(description="The start of the conversation's first message")
    created_at: float
    updated_at: float = Field(description="When its latest turn was asked")
    turns: int


class SessionList(BaseModel):
    """GET /sessions: the caller's own conversations, most recently active first."""

    sessions: list[SessionSummary]


class CancelResult(BaseModel):
    """POST /chat/{task_id}/cancel: where the task stands after the request."""

    task_id: str
    status: TaskState
    cancel_requested: bool = Field(description="True once a cancel has been asked for")


class Account(BaseModel):
    """GET /me: the signed-in caller, and what they may ask for."""

    username: str
    groups: list[str] = Field(description="The groups the caller's token names")
    operator: bool = Field(description="In the operators' group: /stats, /health/full, /test")
    max_priority: int = Field(
        description="The highest priority the caller may send (above 0: the PriorityGroup's)"
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str


class ErrorBody(BaseModel):
    detail: str | list[dict[str, Any]]


class TaskMessage(BaseModel):
    """The SQS message body: only the id; the request row holds the rest (256 KB SQS limit)."""

    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(pattern=r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the chunk log; ``data`` is the SSE payload as the older services sent it."""

    seq: int
    kind: EventKind
    data: dict[str, Any]
    # When the writer wrote it (epoch seconds), if the backend keeps it: readers time their
    # next poll by it. Not part of the wire format.
    written_at: float | None = field(default=None, compare=False)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    def sse_data(self) -> str:
        return json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)


class Check(BaseModel):
    ok: bool
    latency_ms: float
    detail: str | None = None


class QueueDepth(BaseModel):
    visible: int = Field(description="Waiting to be picked up")
    in_flight: int = Field(description="Held by a worker (or deferred for a retry)")
    delayed: int = 0


class QueueCheck(Check):
    depth: QueueDepth | None = None


class HealthFull(BaseModel):
    """GET /health/full: every dependency, with its latency."""

    status: Literal["ok", "degraded"]
    tables: dict[str, Check]
    queues: dict[str, QueueCheck]
    model: Check


class LatencyStats(BaseModel):
    count: int
    p50: float | None = None
    p95: float | None = None


class Stats(BaseModel):
    """GET /stats: queue depths, requests by status, and answer speed over a recent window."""

    window_seconds: int
    queues: dict[str, QueueDepth]
    requests: dict[str, int] = Field(description="Requests of the window by status")
    by_priority: dict[str, int] = Field(description="Requests of the window by queue")
    ttft_seconds: LatencyStats = Field(description="Accepted to first token")
    tokens_per_second: LatencyStats = Field(description="Completion tokens / streaming time")
    recent: list[dict[str, Any]] = Field(
        description="The newest tasks: status, priority, times (no ids: they are their "
        "owners' alone)"
    )


class ModelTest(BaseModel):
    """GET /test: one tiny model call."""

    ok: bool
    model: str
    latency_ms: float
    reply: str | None = None
    error: str | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: list[str] = Field(min_length=1, max_length=10_000, description="Texts to embed")
    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:/-]{1,128}$")

    @field_validator("input")
    @classmethod
    def _no_empty(cls, value: list[str]) -> list[str]:
        if any(not text for text in value):
            raise ValueError("input strings must not be empty")
        if any(len(text) > 32_000 for text in value):
            raise ValueError("input strings are limited to 32,000 characters")
        return value


class Embedding(BaseModel):
    index: int
    embedding: list[float]


class EmbeddingsResponse(BaseModel):
    model: str
    data: list[Embedding]
    usage: dict[str, int]
    batches: int = Field(description="Model calls made (the input split to the batch limit)")
