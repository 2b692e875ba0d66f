"""Waiting inside a run: what `Context.sleep`, `Context.sleep_until` and
`Context.wait_for_input` share with the worker that parks the run, and the checks both planes
make on inputs (names, JSON Schemas, payloads).

A wait is a step. Its result is checkpointed under the run (the timer having fired, the input
received, the input's timeout), so a later attempt replays it and goes on. A wait longer than
the worker's `--park-after` parks the run (WAITING): the attempt ends, freeing its worker
slot, and a timer, an input or a cancel moves the run on (see docs/workflows.md).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

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


def canonical_json(text: str) -> str:
    """A JSON text in one canonical form (sorted keys, no spaces), so that the same payload
    sent twice compares equal; ValueError for a text that is not JSON (NaN and Infinity are
    not JSON)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    value = json.loads(text or "null", parse_constant=refuse)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _checked_schema(schema: Any) -> Any:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_error(payload_json: str, schema: Any) -> str | None:
    """Why the payload does not match the JSON Schema, naming the field ($.path), or None
    when it matches."""
    validator = _checked_schema(schema)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(json.loads(payload_json)))
    except jsonschema.exceptions.ValidationError:
        raise
    except Exception as exc:  # a $ref the schema does not hold, a pattern Python cannot read
        return f"$: the schema cannot be applied ({type(exc).__name__}: {str(exc)[:200]})"
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
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout >= 0):
            raise ValueError(f"the timeout of input {self.name!r} must be a number of seconds")
        if len(self.json.encode()) > MAX_REQUEST_BYTES:
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
