"""The HTTP face's event frames: its hand-built JSON is the proto3 JSON mapping."""

from __future__ import annotations

import json

from google.protobuf import json_format

from longline._store import StoredEvent, encode_event
from longline.control_plane._http import event_dict, ndjson_line, sse_frame
from longline.control_plane._runs import event_to_proto
from longline.v1 import runs_pb2


def _full_event() -> runs_pb2.RunEvent:
    """A RunEvent with every field set, so that a field the hand-built form misses shows."""
    event = runs_pb2.RunEvent()
    for field in runs_pb2.RunEvent.DESCRIPTOR.fields:
        if field.name == "time":
            event.time.FromMilliseconds(1_796_254_022_945)
        elif field.type == field.TYPE_ENUM:
            setattr(event, field.name, runs_pb2.EVENT_TYPE_OUTPUT)
        elif field.type == field.TYPE_INT32:
            setattr(event, field.name, 3)
        else:
            setattr(event, field.name, f'{field.name} \u00e9\n"quoted"')
    return event


def test_the_hand_built_json_is_what_message_to_dict_gives() -> None:
    for event in (_full_event(), runs_pb2.RunEvent(), runs_pb2.RunEvent(type=99)):
        expected = json_format.MessageToDict(event, always_print_fields_with_no_presence=True)
        assert event_dict(event) == expected


def test_an_sse_frame_is_one_block_with_its_id_type_and_one_line_of_data() -> None:
    flat = encode_event("OUTPUT", 2, "a\nb\n")
    stored = StoredEvent.decode("1796254022945-3", dict(zip(flat[::2], flat[1::2], strict=True)))
    frame = sse_frame("r1", stored).decode()
    assert frame.endswith("\n\n") and frame.count("\n\n") == 1
    lines = frame.rstrip("\n").split("\n")
    assert lines[0] == "id: 1796254022945-3"
    assert lines[1] == "event: EVENT_TYPE_OUTPUT"
    assert lines[2].startswith("data: ") and len(lines) == 3
    data = json.loads(lines[2].removeprefix("data: "))
    assert data["message"] == "a\nb\n" and data["eventId"] == "1796254022945-3"
    proto = event_to_proto("r1", stored)
    assert data == json_format.MessageToDict(proto, always_print_fields_with_no_presence=True)
    assert json.loads(ndjson_line("r1", stored)) == data
