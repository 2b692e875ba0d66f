"""Event ids and the event encoding."""

from __future__ import annotations

import pytest

from longline._events import EventBody
from longline._store import (
    InvalidArgumentError,
    StoredEvent,
    encode_event,
    event_id_key,
    parse_event_id,
)


def test_event_ids_order_by_time_then_sequence() -> None:
    ids = ["1700000000000-10", "1700000000000-2", "1699999999999-99", "1700000000001-0"]
    assert sorted(ids, key=event_id_key) == [
        "1699999999999-99",
        "1700000000000-2",
        "1700000000000-10",
        "1700000000001-0",
    ]


@pytest.mark.parametrize("bad", ["", "x", "1", "1-", "-1", "1-2-3", "a-b", " 1-2", "1-2 "])
def test_malformed_event_ids_are_rejected_with_a_helpful_message(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="is not an event id"):
        parse_event_id(bad)


def test_events_round_trip_through_stream_fields() -> None:
    fields = encode_event("OUTPUT", 2, EventBody(message="hi", component="c", span_id="ab"))
    pairs = dict(zip(fields[::2], fields[1::2], strict=True))
    event = StoredEvent.decode("5-1", pairs)
    assert event == StoredEvent(
        "5-1", "OUTPUT", 2, message="hi", data_json="", component="c", span_id="ab"
    )
    assert event.time_ms == 5 and not event.terminal
    assert "d" not in pairs  # empty fields are not stored
