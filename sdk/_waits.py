"""Waiting inside a run: what `Context.sleep`, `Context.sleep_until` and
`Context.wait_for_input` share with the worker that parks the run, and the checks both planes
make on inputs (names, JSON Schemas, payloads).

A wait is a step. Its result is checkpointed under the run (the timer having fired, the input
received, the input's timeout), so a later attempt replays it and goes on. A wait longer than
the worker's `--park-after` parks the run (WAITING): the attempt ends, freeing its worker
slot, and a timer, an input or a cancel moves the run on (see docs/workflows.md).
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import re2
import referencing

__all__ = [
    "MAX_REQUEST_BYTES",
    "InputRequest",
    "Parked",
    "Waits",
    "canonical_json",
    "check_input_name",
    "schema_error",
]

# Input names: what a URL path segment and a shell word take without quoting.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_REQUEST_BYTES = 64 * 1024  # an input request (prompt and schema) as JSON, at most
MAX_WAIT_SECONDS = 100 * 365 * 86400.0  # the longest sleep or input timeout


class Parked(BaseException):
    """The attempt parked its run (it waits, holding no worker): raised out of the wait to
    end the attempt. A BaseException, like cancellation: `except Exception` in workflow code
    and components' retries let it through."""


def check_input_name(name: str) -> str:
    """The name, or ValueError saying what a name may be."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"input name {str(name)[:140]!r} is not valid: 1 to 128 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit"
        )
    return name


MAX_DEPTH = 64  # how deeply a payload's arrays and objects may nest


def _depth(value: Any) -> int:
    """How deeply `value` nests (iteratively: a deep value must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            stack.extend(
                (v, level + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def canonical_json(text: str) -> str:
    """A JSON text in one canonical form (sorted keys, no spaces), so that the same payload
    sent twice compares equal; ValueError for a text that is not JSON (NaN and Infinity are
    not JSON, nor a number too large for a double, nor text that is not UTF-8), or that
    nests deeper than MAX_DEPTH."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    value = json.loads(text or "null", parse_constant=refuse)
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"it nests deeper than {MAX_DEPTH} levels")
    try:
        out = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        out.encode()
    except ValueError as exc:  # inf from 1e400; a lone surrogate (UnicodeEncodeError)
        raise ValueError(f"it holds a value JSON cannot carry ({str(exc)[:100]})") from None
    return out


# Schemas are applied in bounded time: RE2 for their regular expressions (linear: a pattern
# cannot make a payload take hours, as Python's backtracking `re` can), a linear uniqueItems
# (jsonschema's compares every pair), no document fetched for a `$ref` (an empty registry),
# and a budget of keyword applications in proportion to the payload, past which the payload
# is refused (oneOf over a recursive $ref can otherwise take exponential time). The drafts
# accepted; others are refused.
_DRAFTS = {
    "http://json-schema.org/draft-06/schema",
    "http://json-schema.org/draft-07/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "https://json-schema.org/draft/2020-12/schema",
}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_STEPS_PER_VALUE, _STEPS_BASE = 20, 100_000
_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("longline_schema_budget")


class _TooCostly(Exception):
    """The payload took more keyword applications than its budget."""


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield jsonschema.exceptions.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if _regex(pattern).search(k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = [_regex(p) for p in schema.get("patternProperties", {})]
    extras = [k for k in instance if k not in known and not any(p.search(k) for p in patterns)]
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        listed = ", ".join(repr(e) for e in sorted(extras)[:20])
        yield jsonschema.exceptions.ValidationError(
            f"Additional properties are not allowed ({listed} unexpected)"
        )


def _same(value: Any) -> str:
    """A key equal for values JSON Schema calls equal (1 and 1.0; not 1 and true)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(value), sort_keys=True)


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if unique and validator.is_type(instance, "array"):
        keys = [_same(item) for item in instance]
        if len(set(keys)) != len(keys):
            yield jsonschema.exceptions.ValidationError("the array has non-unique elements")


_SAFE = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}


def _counted(keyword: Any) -> Any:
    def apply(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        budget = _budget.get(None)
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise _TooCostly
        return keyword(validator, value, instance, schema)

    return apply


@functools.lru_cache(maxsize=8)
def _validator_class(base: Any) -> Any:
    keywords = {name: _counted(fn) for name, fn in {**base.VALIDATORS, **_SAFE}.items()}
    return jsonschema.validators.extend(base, keywords)  # type: ignore[no-untyped-call]


# Where schemas sit inside a schema: keyword -> how (one schema, a list, or a map of them).
_ONE = (
    "additionalItems",
    "additionalProperties",
    "contains",
    "else",
    "if",
    "items",
    "not",
    "propertyNames",
    "then",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_MAP = (
    "$defs",
    "definitions",
    "dependentSchemas",
    "patternProperties",
    "properties",
    "dependencies",
)


def _subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object in a schema, the root first, by the keywords that hold schemas
    (not the values of enum, const, examples or default)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        for keyword in _ONE:
            if isinstance(node.get(keyword), dict):
                stack.append(node[keyword])
        for keyword in _LIST:
            if isinstance(node.get(keyword), list):
                stack.extend(node[keyword])
        for keyword in _MAP:
            if isinstance(node.get(keyword), dict):
                stack.extend(node[keyword].values())


def _checked_schema(schema: Any) -> Any:
    """A validator for the schema; SchemaError (from jsonschema, or saying what longline
    cannot apply safely) for one it refuses."""
    if isinstance(schema, dict) and "$schema" in schema:
        if str(schema["$schema"]).removesuffix("#") not in _DRAFTS:
            raise jsonschema.exceptions.SchemaError(
                f"$schema {str(schema['$schema'])[:100]!r}: longline applies JSON Schema "
                "drafts 6, 7, 2019-09 and 2020-12 (the default)"
            )
        base = jsonschema.validators.validator_for(schema)
    else:
        base = jsonschema.Draft202012Validator
    base.check_schema(schema)
    nodes = list(_subschemas(schema))
    for node in nodes[1:]:
        if "$schema" in node:  # it would switch to a validator without the bounds above
            raise jsonschema.exceptions.SchemaError(
                "$schema inside a schema is not supported: give it once, at the top"
            )
    for node in nodes:
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns += [str(p) for p in node["patternProperties"]]
        for pattern in patterns:
            try:
                _regex(pattern)
            except re2.error as exc:
                raise jsonschema.exceptions.SchemaError(
                    f"pattern {pattern[:100]!r} is not RE2 syntax ({exc!s:.100}): longline "
                    "applies patterns with RE2 (no lookaround, no backreferences)"
                ) from None
    if any("unevaluatedProperties" in n for n in nodes) and any(
        "patternProperties" in n for n in nodes
    ):
        raise jsonschema.exceptions.SchemaError(
            "unevaluatedProperties together with patternProperties is not supported: "
            "use additionalProperties"
        )
    return _validator_class(base)(schema, registry=referencing.Registry())


def _values(value: Any) -> int:
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def schema_error(payload_json: str, schema: Any) -> str | None:
    """Why the payload does not match the JSON Schema, naming the field ($.path), or None
    when it matches (a schema that cannot be applied matches nothing, and says why).
    Blocking, and at most linear in the payload: call it in a thread from a loop that
    serves others."""
    payload = json.loads(payload_json)
    token = _budget.set([_STEPS_BASE + _STEPS_PER_VALUE * _values(payload)])
    try:
        validator = _checked_schema(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(payload))
    except _TooCostly:
        return "$: applying the schema to this payload takes too long (a simpler payload?)"
    except jsonschema.exceptions.SchemaError as exc:
        return f"$: the schema cannot be applied ({exc.message[:300]})"
    except Exception as exc:  # a $ref the schema does not hold, recursion without end
        return f"$: the schema cannot be applied ({type(exc).__name__}: {str(exc)[:200]})"
    finally:
        _budget.reset(token)
    if error is None:
        return None
    return f"{error.json_path}: {error.message[:300]}"


@dataclass(frozen=True)
class InputRequest:
    """What a run asks for: an input by name, with a prompt and a JSON Schema to show a
    person, and a timeout (seconds; None: it waits for good)."""

    name: str
    prompt: str = ""
    schema: Any = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        check_input_name(self.name)
        if self.schema is not None:
            try:
                _checked_schema(self.schema)
            except jsonschema.exceptions.SchemaError as exc:
                raise ValueError(
                    f"the schema of input {self.name!r} is not a valid JSON Schema: "
                    f"{exc.message[:300]}"
                ) from None
        if self.timeout is not None and not (
            isinstance(self.timeout, int | float)
            and not isinstance(self.timeout, bool)
            and math.isfinite(self.timeout)
            and 0 <= self.timeout <= MAX_WAIT_SECONDS
        ):
            raise ValueError(
                f"the timeout of input {self.name!r} must be 0 to {MAX_WAIT_SECONDS:.0f} "
                "seconds (100 years)"
            )
        try:
            text = self.json
        except ValueError as exc:
            raise ValueError(f"the request for input {self.name!r} is not JSON: {exc}") from None
        if len(text.encode()) > MAX_REQUEST_BYTES:
            raise ValueError(
                f"the request for input {self.name!r} (prompt and schema) is over "
                f"{MAX_REQUEST_BYTES} bytes as JSON"
            )

    @property
    def json(self) -> str:
        """The request as INPUT_REQUESTED's data carries it."""
        return json.dumps(
            {
                "name": self.name,
                "prompt": self.prompt,
                "schema": self.schema,
                "timeout_seconds": self.timeout,
            },
            ensure_ascii=False,
            allow_nan=False,
        )


class Waits(Protocol):
    """How a Context waits: the worker parks the run; `longline.testing` waits in memory."""

    async def sleep(self, step: str, *, delay_ms: int | None, until_ms: int | None) -> None:
        """Wait until `delay_ms` after the step first began, or until `until_ms` (Unix ms);
        raise Parked to end the attempt when the run was parked instead."""
        ...

    async def wait_for_input(self, step: str, request: InputRequest) -> Any:
        """The input's decoded payload; InputTimeout when its timeout passed first; Parked
        when the run was parked to wait for it."""
        ...

    async def start_child(
        self,
        step: str,
        workflow: str,
        input_json: str,
        *,
        detached: bool,
        span_id: str,
        parent_span_id: str,
    ) -> str:
        """Start a child run of `workflow` once for `step`; the step's checkpoint (JSON:
        child, workflow)."""
        ...

    async def wait_children(self, wait_step: str, steps: list[str]) -> dict[str, str]:
        """Of the children started at `steps`, those that ended (step -> its checkpoint,
        JSON: status, child, workflow, result or error), at least one; Parked when the run
        was parked until one ends."""
        ...
