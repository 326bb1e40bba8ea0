"""Tool calls and structured output for the fake OpenAI server (``fake_openai.py``).

Pure functions, no web framework, so tests can compute what the fake sends:

- ``fill(schema)``: a deterministic value that fills a JSON schema: only ``required``
  properties; a string is ``"<property> value"`` (or the first ``enum`` value, or a fixed
  value for a ``format``), an integer 7, a number 4.5, a boolean true, an array one item
  of its ``items`` schema (none when ``items`` has no type); ``$ref`` into
  ``$defs`` and ``anyOf`` / ``oneOf`` (the first option that is not null) are followed.
- ``plan_calls``: which functions the model calls and with what arguments (call ids are
  ``"call_"`` and 24 hex digits of a hash of the conversation and the call's index).
- ``call_plan`` / ``call_deltas``: the calls as they stream, arguments in pieces of
  ``PIECE_CHARS`` characters, cut at ``max_tokens`` as a real model's are.
- ``tool_results``: the results at the end of a conversation, which the answer mentions.
- ``structured_text``: the JSON answer to a ``response_format`` of json_schema or
  json_object.

What OpenAI refuses in such requests (the 400s) is in ``fake_validation.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

PIECE_CHARS = 4  # a streamed piece of arguments or JSON text: ~one token, as text_tokens counts
_FILLABLE = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "properties", "items"}
_FORMATS = {
    "date-time": "2024-01-01T12:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "uuid": "00000000-0000-4000-8000-000000000007",
}


def content_text(content: Any) -> str:
    """A message's content as text (content parts joined)."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    while isinstance(schema, dict) and isinstance(ref := schema.get("$ref"), str):
        target: Any = root
        for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else ():
            target = target.get(part, {}) if isinstance(target, dict) else {}
        if target is schema or not isinstance(target, dict):
            return {}
        schema = target
    return schema if isinstance(schema, dict) else {}


def _clamp(value: float, schema: dict[str, Any]) -> float:
    if isinstance(low := schema.get("minimum"), int | float):
        value = max(value, low)
    if isinstance(high := schema.get("maximum"), int | float):
        value = min(value, high)
    return value


def fill(schema: Any, name: str = "value", root: dict[str, Any] | None = None) -> Any:
    """A deterministic value for ``schema``, named after its property ``name``."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(enum := schema.get("enum"), list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(options := schema.get(key), list) and options:
            chosen = next((o for o in options if _resolve(o, root).get("type") != "null"), None)
            return fill(chosen if chosen is not None else options[0], name, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "integer":
        return math.ceil(_clamp(7, schema))
    if kind == "number":
        return _clamp(4.5, schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = _resolve(schema.get("items"), root)
        count = max(1, int(schema.get("minItems", 1))) if _FILLABLE.intersection(items) else 0
        return [fill(items, name, root) for _ in range(count)]
    if kind == "object":
        properties = schema.get("properties") or {}
        return {key: fill(properties.get(key, {}), key, root) for key in schema.get("required", [])}
    if (fmt := schema.get("format")) in _FORMATS:
        return _FORMATS[fmt]
    if fmt == "email":
        return f"{re.sub(r'[^a-z0-9]+', '.', name.lower()).strip('.') or 'user'}@example.com"
    if fmt in ("uri", "url"):
        return f"https://example.com/{name}"
    text = f"{name} value"
    text += "." * max(0, int(schema.get("minLength", 0)) - len(text))
    return text[: schema["maxLength"]] if isinstance(schema.get("maxLength"), int) else text


def compact(value: Any) -> str:
    """JSON as a model writes it: no spaces."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def arguments(function: dict[str, Any]) -> str:
    """A call's arguments: the JSON object that fills the function's parameters."""
    value = fill(function.get("parameters") or {"type": "object"}, str(function.get("name")))
    return compact(value if isinstance(value, dict) else {})


def call_id(messages: list[dict[str, Any]], index: int) -> str:
    digest = hashlib.sha256(json.dumps([messages, index], sort_keys=True).encode()).hexdigest()
    return f"call_{digest[:24]}"


def plan_calls(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: Any = "auto",
    parallel: bool = True,
    requested: int = 0,
) -> list[dict[str, str]]:
    """The calls the model makes, as ``{"id", "name", "arguments"}``; none means it answers.

    It calls only when the last message is the user's and tools are given: the forced
    function (``requested`` calls of it, at least 1), the first tools when "required" (at
    least 1), and with "auto" the first ``requested`` tools, cycling; one at most when
    parallel calls are off."""
    if not tools or tool_choice == "none" or not messages or messages[-1].get("role") != "user":
        return []
    functions = [t.get("function") or {} for t in tools]
    count = requested
    if isinstance(tool_choice, dict):
        forced = (tool_choice.get("function") or {}).get("name")
        functions = [f for f in functions if f.get("name") == forced]
        count = max(1, requested)
    elif tool_choice == "required":
        count = max(1, requested)
    if not functions:
        return []
    if not parallel:
        count = min(count, 1)
    picked = [functions[i % len(functions)] for i in range(count)]
    return [
        {"id": call_id(messages, i), "name": str(f.get("name")), "arguments": arguments(f)}
        for i, f in enumerate(picked)
    ]


def pieces(text: str) -> list[str]:
    """``text`` in streamed pieces of ``PIECE_CHARS`` characters."""
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def call_plan(
    calls: list[dict[str, str]], max_tokens: int | None = None
) -> tuple[list[tuple[dict[str, str], list[str]]], str]:
    """Each call with its argument pieces, cut at ``max_tokens`` pieces in all (a call not
    begun is left out), and the finish reason: "tool_calls", or "length" if cut."""
    budget = max_tokens if max_tokens is not None else math.inf
    plan: list[tuple[dict[str, str], list[str]]] = []
    for call in calls:
        parts = pieces(call["arguments"])
        if budget <= 0:
            return plan, "length"
        taken = parts[: int(min(budget, len(parts)))]
        budget -= len(taken)
        plan.append((call, taken))
        if len(taken) < len(parts):
            return plan, "length"
    return plan, "tool_calls"


def call_deltas(plan: list[tuple[dict[str, str], list[str]]]) -> list[tuple[dict[str, Any], bool]]:
    """The streamed deltas of the calls, each with whether it is paced as a token: a call's
    header (id, type, name, empty arguments), then its argument pieces."""
    deltas: list[tuple[dict[str, Any], bool]] = []
    for index, (call, parts) in enumerate(plan):
        header = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        deltas.append(({"tool_calls": [header]}, False))
        deltas.extend(
            ({"tool_calls": [{"index": index, "function": {"arguments": part}}]}, True)
            for part in parts
        )
    return deltas


def tool_calls_message(plan: list[tuple[dict[str, str], list[str]]]) -> list[dict[str, Any]]:
    """The calls as a whole (not streamed) message's ``tool_calls``."""
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": "".join(parts)},
        }
        for call, parts in plan
    ]


def tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The ``(function name, content)`` of the tool messages that end the conversation,
    answering the last assistant message's calls."""
    trailing: list[dict[str, Any]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            names = {
                c.get("id"): str((c.get("function") or {}).get("name"))
                for c in message.get("tool_calls") or []
                if isinstance(c, dict)
            }
            return [
                (names.get(m.get("tool_call_id"), "tool"), content_text(m.get("content")))
                for m in reversed(trailing)
            ]
        trailing.append(message)
    return []


def structured_text(response_format: Any, opener: str) -> str | None:
    """The answer to a JSON ``response_format``: the document that fills the json_schema's
    schema, or for json_object ``{"answer": opener}``; None for text."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return compact({"answer": opener})
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        return compact(fill(spec.get("schema") or {"type": "object"}, str(spec.get("name"))))
    return None
