"""Function tools and structured output in the shapes the routes accept (POST /chat and
/v1's Chat Completions take Chat Completions' shapes; /v1/responses its own flat ones), and
their one shape on the task: Chat Completions' (``{"type": "function", "function": {...}}``),
which is what the worker sends the model."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmstream.exceptions import BadRequest

_NAME = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128  # OpenAI's limit on the functions of one request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponsesTool(_Strict):
    """A function tool of the Responses API (flat)."""

    type: Literal["function"]
    name: str = Field(pattern=_NAME)
    description: str | None = Field(default=None, max_length=8_000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def for_model(self) -> dict[str, Any]:
        function = self.model_dump(exclude={"type"}, exclude_none=True)
        return {"type": "function", "function": function}


class Function(_Strict):
    name: str = Field(pattern=_NAME)
    description: str | None = Field(default=None, max_length=8_000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Strict):
    """A function tool of Chat Completions."""

    type: Literal["function"]
    function: Function

    def for_model(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class NamedResponsesChoice(_Strict):
    type: Literal["function"]
    name: str


class FunctionName(_Strict):
    name: str


class NamedChatChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


Mode = Literal["auto", "none", "required"]


class JsonSchemaFormat(_Strict):
    """``text.format`` of the Responses API: the answer is JSON of this schema."""

    type: Literal["json_schema"]
    name: str = Field(pattern=_NAME)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class JsonSchema(_Strict):
    name: str = Field(pattern=_NAME)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ChatJsonSchemaFormat(_Strict):
    """``response_format`` of Chat Completions."""

    type: Literal["json_schema"]
    json_schema: JsonSchema


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class TextFormat(_Strict):
    type: Literal["text"]


def tools_for_model(
    tools: list[ResponsesTool] | list[ChatTool] | None,
    choice: Mode | NamedResponsesChoice | NamedChatChoice | None,
    parallel: bool | None,
) -> dict[str, Any]:
    """The task's tool fields (JSON text, as the row keeps them); a forced function that is
    not among the tools is a 400 naming ``tool_choice``."""
    if not tools:
        if isinstance(choice, NamedResponsesChoice | NamedChatChoice) or choice == "required":
            raise BadRequest("tool_choice: no tools were given to choose from", "tool_choice")
        return {}
    if len(tools) > MAX_TOOLS:
        raise BadRequest(f"tools: at most {MAX_TOOLS}, got {len(tools)}", "tools")
    names = [t.name if isinstance(t, ResponsesTool) else t.function.name for t in tools]
    forced: Any = choice
    if isinstance(choice, NamedResponsesChoice | NamedChatChoice):
        name = choice.name if isinstance(choice, NamedResponsesChoice) else choice.function.name
        if name not in names:
            raise BadRequest(f"tool_choice: no tool is named {name!r}", "tool_choice")
        forced = {"type": "function", "function": {"name": name}}
    fields: dict[str, Any] = {"tools": _json([t.for_model() for t in tools])}
    if forced is not None:
        fields["tool_choice"] = _json(forced)
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    return fields


def format_for_model(
    shape: JsonSchemaFormat | ChatJsonSchemaFormat | JsonObjectFormat | TextFormat | None,
) -> dict[str, Any]:
    """The task's response_format (JSON text), for a structured answer; none for text."""
    if shape is None or isinstance(shape, TextFormat):
        return {}
    if isinstance(shape, JsonSchemaFormat):
        schema = {
            "name": shape.name,
            "schema": shape.schema_,
            "description": shape.description,
            "strict": shape.strict,
        }
        chat = {
            "type": "json_schema",
            "json_schema": {k: v for k, v in schema.items() if v is not None},
        }
        return {"response_format": _json(chat)}
    return {"response_format": _json(shape.model_dump(by_alias=True, exclude_none=True))}


def responses_tools(tools: str | None) -> list[dict[str, Any]]:
    """A task's tools in the Responses API's shape (for the Response object)."""
    return [{"type": "function", **t["function"]} for t in json.loads(tools or "[]")]


def responses_choice(choice: str | None) -> Any:
    forced = json.loads(choice) if choice else "auto"
    if isinstance(forced, dict):
        return {"type": "function", "name": forced["function"]["name"]}
    return forced


def responses_format(response_format: str | None) -> dict[str, Any]:
    shape: dict[str, Any] = json.loads(response_format) if response_format else {"type": "text"}
    if shape["type"] == "json_schema":
        return {"type": "json_schema", **shape["json_schema"]}
    return dict(shape)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
