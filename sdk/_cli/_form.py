"""Asking a person at a terminal for the input a run requests: a form drawn from the
request's JSON Schema (`longline run` and `longline watch` on a terminal).

An object schema becomes one question per property (yes/no for booleans, numbers parsed,
a choice for enums, one line per item for lists of strings, JSON for anything else); any
other schema asks for the payload as JSON. The answer is checked against the schema, and
the form is asked again, saying what was wrong, until it passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .._waits import schema_error

__all__ = ["ask_input"]

Read = Callable[[str], str]
Write = Callable[[str], None]

_YES = {"y", "yes", "true", "1"}
_NO = {"n", "no", "false", "0"}


def _field(name: str, spec: Any, required: bool, read: Read, write: Write) -> tuple[bool, Any]:
    """(answered, value) for one property; not answered when left empty and not required."""
    spec = spec if isinstance(spec, dict) else {}
    kind = spec.get("type")
    hint = f" ({spec['description']})" if isinstance(spec.get("description"), str) else ""
    optional = "" if required else ", empty to leave out"
    while True:
        if kind == "boolean":
            text = read(f"{name}{hint} [yes/no{optional}]: ").strip().lower()
        elif isinstance(spec.get("enum"), list):
            choices = " | ".join(json.dumps(c) for c in spec["enum"])
            text = read(f"{name}{hint} [one of {choices}{optional}]: ").strip()
        elif (
            kind == "array"
            and isinstance(spec.get("items"), dict)
            and (spec["items"].get("type") == "string")
        ):
            write(f"{name}{hint}: one per line, an empty line ends{optional}")
            items = []
            while line := read("  - ").strip():
                items.append(line)
            if not items and not required:
                return False, None
            return True, items
        elif kind in ("string", "integer", "number"):
            text = read(f"{name}{hint} [{kind}{optional}]: ").strip()
        else:
            text = read(f"{name}{hint} [JSON{optional}]: ").strip()
        if not text and not required:
            return False, None
        try:
            return True, _parse(text, kind, spec)
        except ValueError as exc:
            write(f"  {exc}; try again")


def _parse(text: str, kind: Any, spec: dict[str, Any]) -> Any:
    if kind == "boolean":
        if text in _YES:
            return True
        if text in _NO:
            return False
        raise ValueError("answer yes or no")
    if isinstance(spec.get("enum"), list):
        for choice in spec["enum"]:
            if text in (str(choice), json.dumps(choice)):
                return choice
        raise ValueError("not one of the choices")
    if kind == "string":
        return text
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError("not a whole number") from None
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError("not a number") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None


def _form(schema: Any, read: Read, write: Write) -> Any:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(properties, dict) and properties and schema.get("type", "object") == "object":
        required = set(schema.get("required") or [])
        payload = {}
        for name, spec in properties.items():
            answered, value = _field(str(name), spec, name in required, read, write)
            if answered:
                payload[str(name)] = value
        return payload
    while True:
        try:
            return json.loads(read("payload [JSON]: "))
        except ValueError as exc:
            write(f"  not JSON ({exc}); try again")


def ask_input(request: dict[str, Any], read: Read = input, write: Write = print) -> Any:
    """The payload a person gives for `request` (INPUT_REQUESTED's data), checked against
    its schema. EOFError when the terminal closes."""
    name = str(request.get("name", ""))
    prompt = str(request.get("prompt") or "")
    write(f"\nThe run asks for input {name}" + (f":\n{prompt}" if prompt else "."))
    schema = request.get("schema")
    while True:
        payload = _form(schema, read, write)
        error = schema_error(json.dumps(payload), schema) if schema is not None else None
        if error is None:
            return payload
        write(f"  that does not match what the run asks for: {error}; once more")
