"""The event contract is defined once (longline._events); every other form follows it."""

from __future__ import annotations

import dataclasses

from longline import Event, EventType, RunStatus, TraceSpan
from longline._events import (
    BODY_FIELDS,
    EMITTABLE,
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    WIRE_NAMES,
    EventBody,
)
from longline._store import StoredEvent
from longline._types import SPAN_COPIED
from longline.testing import RecordedEvent
from longline.v1 import runs_pb2


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_form_of_an_event_carries_the_body_fields() -> None:
    for cls in (Event, StoredEvent, RecordedEvent):
        assert issubclass(cls, EventBody)
        assert set(BODY_FIELDS) <= _names(cls), cls


def test_the_proto_event_and_the_sdk_event_have_the_same_fields() -> None:
    proto = set(runs_pb2.RunEvent.DESCRIPTOR.fields_by_name)
    assert proto == _names(Event)


def test_the_proto_span_holds_every_copied_field_with_its_name() -> None:
    proto = runs_pb2.TraceSpan.DESCRIPTOR.fields_by_name
    assert set(SPAN_COPIED) <= set(proto)
    assert set(proto) == _names(TraceSpan)


def test_stream_names_are_short_and_unique_and_not_the_reserved_ones() -> None:
    wires = [wire for _, wire in WIRE_NAMES]
    assert len(set(wires)) == len(wires) == len(BODY_FIELDS)
    assert not {"t", "a"} & set(wires)  # type and attempt


def test_enums_match_the_proto_and_terminal_sets_derive_from_them() -> None:
    assert {f"EVENT_TYPE_{t}" for t in EventType} == set(runs_pb2.EventType.keys())
    assert {f"RUN_STATUS_{s}" for s in RunStatus} == set(runs_pb2.RunStatus.keys())
    assert (
        TERMINAL_STATUSES
        == {s for s in RunStatus if s.terminal}
        == {
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
        }
    )
    assert TERMINAL_EVENTS == {t for t in EventType if t.terminal}
    assert not set(EMITTABLE) & TERMINAL_EVENTS


def test_the_scripts_accept_exactly_the_fields_and_types_of_the_contract() -> None:
    from longline._store import _scripts
    from longline._store._events import FIELD_NAMES

    append, finish = _scripts.APPEND_EVENTS, _scripts.FINISH_RUN
    assert "{" + ", ".join(f"{n}=true" for n in FIELD_NAMES) + "}" in append
    assert "{" + ", ".join(f"{n}=true" for n in FIELD_NAMES[1:]) + "}" in finish
    assert set(_scripts.WORKER_EVENTS) == {EventType.RUN_STARTED, *EMITTABLE}
    assert FIELD_NAMES[2:] == tuple(wire for _, wire in WIRE_NAMES)
