"""What OpenAI refuses in a chat request's tools, tool messages and response_format.

``validate(body)`` returns the first ``Problem(message, param, code)`` that the real API
answers with a 400 ``invalid_request_error`` (message, param and code worded as OpenAI's
where known), or None: tools that are not functions or lack a valid name; ``tool_choice`` or
``parallel_tool_calls`` without tools; a ``tool_choice`` that is no known value or names a
function not in ``tools``; a ``role: "tool"`` message that answers no call of the assistant
message before it; an assistant's calls left without results; a ``response_format`` of an
unknown type or a json_schema without a name; json_object when no message says "json";
and a strict schema (of a tool or a json_schema) with an object whose properties are not
all required or that allows additional properties.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from localcloud.fake_tools import content_text

TOOL_CHOICES = ("none", "auto", "required")
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class Problem(NamedTuple):
    """A request OpenAI refuses with 400: its error message, param and code."""

    message: str
    param: str | None = None
    code: str | None = None


def _strict_problem(schema: Any, where: tuple[str, ...] = ()) -> str | None:
    """Why a strict schema is not one OpenAI accepts: every object lists all its properties
    as required and has ``additionalProperties`` false."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if "object" in (kind if isinstance(kind, list) else [kind]) or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={where}, 'additionalProperties' is required to be supplied and"
                " to be false."
            )
        properties = schema.get("properties") or {}
        if missing := [k for k in properties if k not in (schema.get("required") or [])]:
            return (
                f"In context={where}, 'required' is required to be supplied and to be an array"
                f" including every key in properties. Missing '{missing[0]}'."
            )
    children = [
        *(((*where, "properties", k), v) for k, v in (schema.get("properties") or {}).items()),
        *(((*where, "$defs", k), v) for k, v in (schema.get("$defs") or {}).items()),
        *(((*where, "anyOf", str(i)), v) for i, v in enumerate(schema.get("anyOf") or [])),
        ((*where, "items"), schema.get("items")),
    ]
    for path, child in children:
        if (problem := _strict_problem(child, path)) is not None:
            return problem
    return None


def _validate_tools(body: dict[str, Any]) -> Problem | None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return Problem("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    if tools == []:
        return Problem(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got"
            " an empty array instead.",
            "tools",
            "empty_array",
        )
    names = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return Problem(
                f"Invalid value for 'tools[{i}].type': supported values are: 'function'.",
                f"tools[{i}].type",
                "invalid_value",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            param = f"tools[{i}].function"
            return Problem(
                f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
            )
        name = function.get("name")
        if not name:
            param = f"tools[{i}].function.name"
            return Problem(
                f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
            )
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return Problem(
                f"Invalid 'tools[{i}].function.name': string does not match pattern. Expected"
                " a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                f"tools[{i}].function.name",
                "invalid_value",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            param = f"tools[{i}].function.parameters"
            return Problem(
                f"Invalid type for '{param}': expected an object.", param, "invalid_type"
            )
        if function.get("strict") and (why := _strict_problem(parameters or {})):
            return Problem(
                f"Invalid schema for function '{name}': {why}",
                f"tools[{i}].function.parameters",
                "invalid_function_parameters",
            )
        names.append(name)
    choice = body.get("tool_choice")
    for field in ("tool_choice", "parallel_tool_calls"):
        if body.get(field) is not None and not tools:
            return Problem(
                f"Invalid value for '{field}': '{field}' is only allowed when 'tools' are"
                " specified.",
                field,
            )
    if choice is None or choice in TOOL_CHOICES:
        return None
    if isinstance(choice, str):
        return Problem(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    forced = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not forced:
        return Problem(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or"
            " {'type': 'function', 'function': {'name': ...}}.",
            "tool_choice",
            "invalid_value",
        )
    if forced not in names:
        return Problem(
            f"Invalid value for 'tool_choice': function '{forced}' is not in 'tools'.",
            "tool_choice",
            "invalid_value",
        )
    return None


def _validate_messages(messages: list[Any]) -> Problem | None:
    ids: set[str] = set()  # the calls of the assistant message the tool messages answer
    unanswered: list[str] = []
    asked_at = -1  # that assistant message's index; -1: tool messages answer nothing here
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return Problem(
                f"Invalid type for 'messages[{i}]': expected an object.",
                f"messages[{i}]",
                "invalid_type",
            )
        if message.get("role") == "tool":
            answered = message.get("tool_call_id")
            if asked_at < 0:
                return Problem(
                    "Invalid parameter: messages with role 'tool' must be a response to a"
                    " preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            if not answered:
                param = f"messages.[{i}].tool_call_id"
                return Problem(
                    f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
                )
            if answered not in ids:
                return Problem(
                    f"Invalid parameter: 'tool_call_id' of '{answered}' not found in"
                    " 'tool_calls' of previous message.",
                    f"messages.[{i}].tool_call_id",
                )
            unanswered = [c for c in unanswered if c != answered]
            continue
        if unanswered:
            break
        asked_at, ids = -1, set()
        if message.get("role") == "assistant" and message.get("tool_calls"):
            if not isinstance(message["tool_calls"], list):
                param = f"messages.[{i}].tool_calls"
                return Problem(
                    f"Invalid type for '{param}': expected an array.", param, "invalid_type"
                )
            for j, call in enumerate(message["tool_calls"]):
                for field in ("id", "function"):
                    if not isinstance(call, dict) or not call.get(field):
                        param = f"messages.[{i}].tool_calls.[{j}].{field}"
                        return Problem(
                            f"Missing required parameter: '{param}'.",
                            param,
                            "missing_required_parameter",
                        )
            asked_at = i
            ids = {call["id"] for call in message["tool_calls"]}
            unanswered = [call["id"] for call in message["tool_calls"]]
    if unanswered:
        return Problem(
            "An assistant message with 'tool_calls' must be followed by tool messages responding"
            " to each 'tool_call_id'. The following tool_call_ids did not have response"
            f" messages: {', '.join(unanswered)}",
            f"messages.[{asked_at}].role",
        )
    return None


def _validate_response_format(body: dict[str, Any]) -> Problem | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        return Problem(
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and"
            " 'json_schema'.",
            "response_format.type",
            "invalid_value",
        )
    if kind == "json_object":
        said = " ".join(content_text(m.get("content")) for m in body["messages"]).lower()
        if "json" not in said:
            return Problem(
                "'messages' must contain the word 'json' in some form, to use 'response_format'"
                " of type 'json_object'.",
                "messages",
            )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        for param, missing in (
            ("response_format.json_schema", not isinstance(spec, dict)),
            (
                "response_format.json_schema.name",
                not isinstance(spec, dict) or not spec.get("name"),
            ),
        ):
            if missing:
                return Problem(
                    f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
                )
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            param = "response_format.json_schema.schema"
            return Problem(
                f"Invalid type for '{param}': expected an object.", param, "invalid_type"
            )
        if spec.get("strict") and (why := _strict_problem(schema or {})):
            return Problem(
                f"Invalid schema for response_format '{spec['name']}': {why}",
                "response_format",
                "invalid_json_schema",
            )
    return None


def validate(body: dict[str, Any]) -> Problem | None:
    """What OpenAI would refuse in a chat request's tools, messages or response_format."""
    return (
        _validate_tools(body)
        or _validate_messages(body["messages"])
        or _validate_response_format(body)
    )
