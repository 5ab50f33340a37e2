"""A tiny JSON-schema checker for structured answers (required keys and basic types only).

Enough to catch the failures LLMs really produce (prose instead of JSON, a missing key, a
string where a boolean was asked) without a jsonschema dependency.
"""

from __future__ import annotations

import copy
import json
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class SchemaMismatch(ValueError):
    """The parsed answer does not fit the schema; the message gives the JSON path."""


def validate(value: Any, schema: dict, path: str = "$") -> None:
    """Raise :class:`SchemaMismatch` when ``value`` violates ``schema``'s types/required/enum."""
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        ok = False
        for name in names:
            py = _TYPES.get(name)
            if py is None:
                ok = True  # unknown type keyword: do not guess
            elif isinstance(value, bool) and name in ("integer", "number"):
                continue  # bool is an int subclass in Python, not in JSON
            elif isinstance(value, py):
                ok = True
        if not ok:
            raise SchemaMismatch(f"{path}: expected {expected}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaMismatch(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                raise SchemaMismatch(f"{path}: missing required key {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value and isinstance(sub, dict):
                validate(value[key], sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{i}]")


def parse_json_answer(text: str, schema: dict) -> dict:
    """Parse the model's text as a JSON object fitting ``schema`` (code fences tolerated)."""
    body = text.strip()
    if body.startswith("```"):
        # Some OpenAI-compatible servers ignore response_format and fence the JSON.
        body = body.strip("`")
        if body.startswith("json"):
            body = body[4:]
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise SchemaMismatch(f"answer is not valid JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}") from None
    if not isinstance(data, dict):
        raise SchemaMismatch(f"answer is JSON {type(data).__name__}, expected an object")
    validate(data, schema)
    return data


def openai_strict_schema(schema: dict) -> dict:
    """A copy with ``additionalProperties: false`` on every object, which OpenAI's strict mode demands."""
    out = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(out)
    return out
