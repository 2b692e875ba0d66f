"""Values from a newer (or older) version of the other side never break a reader."""

from __future__ import annotations

import json

from longline import EventType, RunStatus
from longline._client import event_from_proto, run_from_proto
from longline._store import StoredEvent
from longline.control_plane import _trace
from longline.v1 import runs_pb2


def test_an_event_type_the_sdk_does_not_know_is_unspecified_and_keeps_its_content() -> None:
    wire = runs_pb2.RunEvent(event_id="1-0", run_id="r", message="hi", data_json='{"a": 1}')
    wire.type = 42  # type: ignore[assignment]  # a value from a newer server
    event = event_from_proto(wire)
    assert event.type is EventType.UNSPECIFIED
    assert (event.message, event.data, event.event_id) == ("hi", {"a": 1}, "1-0")
    assert not event.type.terminal


def test_a_run_status_the_sdk_does_not_know_is_unspecified() -> None:
    wire = runs_pb2.Run(run_id="r", workflow="w")
    wire.status = 42  # type: ignore[assignment]  # e.g. RUN_STATUS_WAITING, from a newer server
    run = run_from_proto(wire)
    assert run.status is RunStatus.UNSPECIFIED and not run.status.terminal


def _event(n: int, type: str, data: object = None, **kw: str) -> StoredEvent:
    data_json = data if isinstance(data, str) else json.dumps(data) if data is not None else ""
    return StoredEvent(event_id=f"{n}-0", type=type, attempt=1, data_json=data_json, **kw)


def test_the_trace_builder_takes_events_it_does_not_understand() -> None:
    events = [
        _event(1, "RUN_STARTED", {"worker": "w", "checkpoints": [1, None, {"x": 1}, "ok#1"]}),
        _event(2, "RUN_STARTED", {"checkpoints": "not a list"}, span_id="a2"),
        _event(3, "SOMETHING_NEW", {"anything": True}),
        _event(4, "COMPONENT_STARTED", [1, 2], span_id="c1", component="c"),
        _event(5, "COMPONENT_STARTED", "not json", span_id="c2", component="c"),
        _event(6, "COMPONENT_STARTED", {"step": {"no": "str"}}, span_id="c3", component="c"),
        _event(7, "COMPONENT_FINISHED", {"tries": "many", "llm": {"usage": "none"}}, span_id="c1"),
        _event(8, "COMPONENT_FINISHED", {"error": "just text", "llm": "x"}, span_id="c2"),
        _event(
            9,
            "COMPONENT_FINISHED",
            {"tries": 2.5, "llm": {"model": 5, "usage": {"input_tokens": "x", "output_tokens": 3}}},
            span_id="c3",
        ),
        _event(10, "RUN_SUCCEEDED"),
    ]
    spans = _trace.build(events)
    by_id = {s.span_id: s for s in spans}
    assert [s.kind for s in spans].count("ATTEMPT") == 2
    assert by_id["c1"].status == "OK" and by_id["c1"].tries == 1
    assert by_id["c2"].status == "ERROR" and by_id["c2"].error == "just text"
    assert (by_id["c3"].tries, by_id["c3"].input_tokens, by_id["c3"].output_tokens) == (2, 0, 3)
    assert by_id["c3"].step == ""
    assert [s.step for s in spans if s.status == "REPLAYED"] == ["ok#1"]
