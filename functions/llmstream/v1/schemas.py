"""The OpenAI-compatible requests: what /v1 accepts, and how each maps onto a chat task.

Every field a client may send either changes the answer as OpenAI's API says, is accepted
because it cannot change the answer (``user``, ``prompt_cache_key``...), or is refused
(400, naming the field): ``extra="forbid"`` turns any other field into that 400, so a
client never gets an answer that silently ignored what it asked for.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from llmstream.exceptions import InputTooLarge
from llmstream.models import ChatRequest
from llmstream.tool_specs import (
    ChatJsonSchemaFormat,
    ChatTool,
    JsonObjectFormat,
    JsonSchemaFormat,
    Mode,
    NamedChatChoice,
    NamedResponsesChoice,
    ResponsesTool,
    TextFormat,
    format_for_model,
    tools_for_model,
)

# What one request may send the model in all (its messages' text, UTF-8): the request row
# holds it beside the answer (a DynamoDB item is at most 400 KB).
MAX_INPUT_BYTES = 150_000
TITLE_CHARS = 2_000  # the task's ``message``: the conversation's title and history line
_MODEL = r"^[A-Za-z0-9._:/-]{1,128}$"
RESPONSE_ID = r"^resp_[0-9a-f]{32}$"

Role = Literal["user", "assistant", "system", "developer"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list[Any] | None = None  # an earlier output part sent back as it came


class InputMessage(_Strict):
    """An input message of the Responses API (text only)."""

    type: Literal["message"] = "message"
    role: Role
    content: str | list[TextPart]
    id: str | None = None  # an earlier output item sent back as it came
    status: str | None = None


class FunctionCallItem(_Strict):
    """A function call the model made, sent back as input (without previous_response_id)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutput(_Strict):
    """The result of a function call, for the model to go on with."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: str
    id: str | None = None
    status: str | None = None


class CalledFunction(_Strict):
    name: str = Field(min_length=1, max_length=64)
    arguments: str


class ToolCall(_Strict):
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"]
    function: CalledFunction


class ChatMessage(_Strict):
    """A message of Chat Completions (text, the assistant's tool calls, a tool's result)."""

    role: Role | Literal["tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, max_length=128)
    refusal: str | None = None


class TextConfig(_Strict):
    format: TextFormat | JsonSchemaFormat | JsonObjectFormat | None = None
    verbosity: Literal["medium"] | None = None


class ResponsesRequest(_Strict):
    """POST /v1/responses."""

    model: str | None = Field(default=None, pattern=_MODEL)
    input: str | list[InputMessage | FunctionCallItem | FunctionCallOutput] = Field(min_length=1)
    instructions: str | None = Field(default=None, max_length=8_000)
    max_output_tokens: int | None = Field(default=None, ge=1, le=32_768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    background: bool = False
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Mode | NamedResponsesChoice | None = None
    parallel_tool_calls: bool | None = None
    # Accepted; none changes the answer.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    truncation: Literal["disabled"] | None = None
    include: list[Any] | None = Field(default=None, max_length=0)
    text: TextConfig | None = None
    stream_options: dict[str, Any] | None = None

    _metadata = field_validator("metadata")(lambda cls, v: _check_metadata(v))

    @model_validator(mode="after")
    def _background_is_stored(self) -> ResponsesRequest:
        if self.background and not self.store:
            raise ValueError("background responses must be stored: drop store=false")
        return self

    def messages(self) -> list[dict[str, Any]]:
        """The input as the model's messages: function calls sent back join into one
        assistant message, and their outputs become tool messages."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict[str, Any]] = []
        for item in self.input:
            if isinstance(item, InputMessage):
                messages.append(_message(item.role, item.content))
            elif isinstance(item, FunctionCallOutput):
                messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
                )
            else:
                call = _call(item.call_id, item.name, item.arguments)
                if messages and messages[-1].get("tool_calls") and not messages[-1]["content"]:
                    messages[-1]["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        return messages

    def tool_fields(self) -> dict[str, Any]:
        """The task's tools and answer format (tools.py)."""
        shape = self.text.format if self.text else None
        return {
            **tools_for_model(self.tools, self.tool_choice, self.parallel_tool_calls),
            **format_for_model(shape),
        }


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatCompletionsRequest(_Strict):
    """POST /v1/chat/completions."""

    model: str | None = Field(default=None, pattern=_MODEL)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    metadata: dict[str, str] | None = None
    # Accepted; none changes the answer.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    store: bool | None = None
    logprobs: Literal[False] | None = None
    response_format: TextFormat | JsonObjectFormat | ChatJsonSchemaFormat | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Mode | NamedChatChoice | None = None
    parallel_tool_calls: bool | None = None

    _metadata = field_validator("metadata")(lambda cls, v: _check_metadata(v))

    def messages_sent(self) -> list[dict[str, Any]]:
        sent = []
        for m in self.messages:
            message = _message(m.role, m.content or "")
            if m.tool_calls:
                message["content"] = message["content"] or None
                message["tool_calls"] = [
                    _call(c.id, c.function.name, c.function.arguments) for c in m.tool_calls
                ]
            if m.role == "tool":
                message["tool_call_id"] = m.tool_call_id or ""
            sent.append(message)
        return sent

    def tool_fields(self) -> dict[str, Any]:
        """The task's tools and answer format (tools.py)."""
        return {
            **tools_for_model(self.tools, self.tool_choice, self.parallel_tool_calls),
            **format_for_model(self.response_format),
        }


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
    if value is not None and (
        len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())
    ):
        raise ValueError("metadata: at most 16 pairs, keys <= 64 and values <= 512 chars")
    return value


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _message(role: str, content: str | list[TextPart]) -> dict[str, Any]:
    """One message as the worker sends it: its role (developer as system, which every
    OpenAI-compatible server knows) and its text."""
    text = content if isinstance(content, str) else "".join(p.text for p in content)
    return {"role": "system" if role == "developer" else role, "content": text}


def to_chat_request(
    messages: list[dict[str, Any]],
    *,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    system: str | None = None,
    session_id: str | None = None,
    cancel_on_disconnect: bool = False,
) -> ChatRequest:
    """The /chat request an OpenAI-style one is: its last user text as the message (the
    conversation's title; the task carries the messages themselves)."""
    said = len(json.dumps(messages, ensure_ascii=False).encode()) + len((system or "").encode())
    if said > MAX_INPUT_BYTES:
        raise InputTooLarge(f"input: at most {MAX_INPUT_BYTES} bytes in all, got {said}")
    users = [m["content"] for m in messages if m["role"] == "user" and (m["content"] or "").strip()]
    results = [m for m in messages if m["role"] == "tool"]
    if not users and not results:
        raise InputTooLarge("input: needs a user message with text, or function call outputs")
    title = users[-1] if users else f"[{len(results)} function call output(s)]"
    try:
        return ChatRequest(
            message=title[:TITLE_CHARS],
            session_id=session_id,
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            cancel_on_disconnect=cancel_on_disconnect,
        )
    except ValidationError as e:  # the fields were checked above; this is the backstop
        raise InputTooLarge(f"input: {e.errors()[0]['msg']}") from e
