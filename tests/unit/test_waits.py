"""Inputs' checks: names, payloads, schemas applied in linear time, and waits' bounds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from longline._context import Context
from longline._store import RunRecord
from longline._waits import InputRequest, canonical_json, check_input_name, schema_error
from longline.control_plane._runs import run_to_proto


def test_a_pattern_that_backtracks_for_hours_in_python_is_applied_in_linear_time() -> None:
    # Python's re takes about 4x longer per 2 more characters here: hours at 50.
    schema = {"type": "string", "pattern": r"^([a-zA-Z0-9]+)+@example\.com$"}
    assert "does not match" in (schema_error(json.dumps("a" * 50 + "!"), schema) or "")
    keys = {"type": "object", "patternProperties": {r"^(a+)+$": {"type": "integer"}}}
    assert schema_error(json.dumps({"a" * 50 + "!": "x"}), keys) is None
    closed = {**keys, "additionalProperties": False}
    assert "not allowed" in (schema_error(json.dumps({"a" * 50 + "!": 1}), closed) or "")
    assert schema_error(json.dumps({"aaa": 1}), closed) is None


def test_unique_items_is_linear_and_keeps_json_schema_equality() -> None:
    schema = {"type": "array", "uniqueItems": True}
    many = [{"n": i} for i in range(100_000)]  # jsonschema compares every pair of objects
    assert schema_error(json.dumps(many), schema) is None
    assert schema_error(json.dumps([*many, {"n": 5}]), schema) is not None
    assert schema_error("[1, 1.0]", schema) is not None
    assert schema_error("[1, true]", schema) is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "(?=a)b"},
        {"patternProperties": {r"(\w)\1": {}}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
        {"unevaluatedProperties": False, "patternProperties": {"^a": {}}},
        {"type": "number", "minimum": float("nan")},
        {"type": "nonsense"},
        {"type": "number", "minimum": True},
    ],
)
def test_a_schema_longline_cannot_apply_safely_is_refused_when_the_run_asks(
    schema: object,
) -> None:
    with pytest.raises(ValueError, match="schema|JSON"):
        InputRequest("ok", schema=schema)


def test_names_payloads_and_timeouts_are_checked() -> None:
    for bad in ("", "a b", "-a", "x" * 129, "é"):
        with pytest.raises(ValueError, match="input name"):
            check_input_name(bad)
    assert canonical_json('{"b": 1, "a": [true, null]}') == '{"a":[true,null],"b":1}'
    for bad in ("NaN", "1e400", '"\\ud800"', "[" * 100 + "]" * 100, "{"):
        with pytest.raises(ValueError):
            canonical_json(bad)
    with pytest.raises(ValueError, match="100 years"):
        InputRequest("ok", timeout=1e12)


class _Sink:
    async def emit(self, *args: object, **kwargs: object) -> str:
        return ""

    async def output(self, text: str, parent_span_id: str) -> None:
        return None


async def test_a_sleep_past_what_a_timestamp_carries_is_refused() -> None:
    ctx = Context("r", 1, "w", _Sink())
    with pytest.raises(ValueError, match="100 years"):
        await ctx.sleep(1e12)
    with pytest.raises(ValueError, match="100 years"):
        await ctx.sleep(timedelta.max)
    with pytest.raises(ValueError, match="9000"):
        await ctx.sleep_until(datetime(9500, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        await ctx.sleep_until(datetime(2030, 1, 1))  # noqa: DTZ001


def test_a_wake_time_no_timestamp_carries_is_left_out_not_an_error() -> None:
    record = RunRecord(
        run_id="r",
        workflow="w",
        status="WAITING",
        attempt=1,
        input_json="",
        result_json="",
        error_type="",
        error_message="",
        error_component="",
        create_ms=1,
        update_ms=1,
        last_event_id="",
        worker_id="",
        wait_kind="sleep",
        wake_ms=10**18,
    )
    assert not run_to_proto(record).wait.HasField("wake_time")


def test_a_schema_is_applied_within_a_budget_in_proportion_to_the_payload() -> None:
    # Two branches at every level of a recursive $ref: 2**depth work without a bound.
    node = {
        "anyOf": [
            {"properties": {"c": {"items": {"$ref": "#/$defs/n"}}}, "required": ["x"]},
            {"properties": {"c": {"items": {"$ref": "#/$defs/n"}}}, "required": ["y"]},
        ]
    }
    schema = {"$defs": {"n": node}, "$ref": "#/$defs/n"}
    payload: dict[str, object] = {"c": []}
    for _ in range(40):
        payload = {"c": [payload]}
    assert "takes too long" in (schema_error(json.dumps(payload), schema) or "")


def test_a_ref_to_another_document_is_not_fetched(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"type": "string"}')
    schema = {"properties": {"a": {"$ref": other.as_uri()}}}
    assert "cannot be applied" in (schema_error('{"a": 1}', schema) or "")


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"pattern": {"type": "string"}, "patternProperties": {"type": "object"}}},
        {"enum": [{"pattern": "(?=a)"}], "examples": [{"patternProperties": {"(?=": 1}}]},
    ],
)
def test_values_that_merely_look_like_keywords_do_not_refuse_a_schema(schema: object) -> None:
    InputRequest("ok", schema=schema)


def test_a_schema_inside_a_schema_cannot_switch_drafts() -> None:
    nested = {"properties": {"n": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}}
    with pytest.raises(ValueError, match="at the top"):
        InputRequest("ok", schema=nested)
