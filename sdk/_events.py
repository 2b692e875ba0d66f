"""The event contract, defined once: run statuses, event types, what an event says, and what
a trace span says.

Every form of an event derives from `EventBody`: the Redis codec (`_store._events`, which
takes each field's short stream name from its `wire` metadata), the sinks (`EventSink`, the
worker's writer, `testing`), the SDK's `Event`, and both proto mappers, which copy the fields
by name (a unit test holds the proto's `RunEvent` to the same names). Adding a field to an
event touches the proto, `EventBody` and nothing else. Trace spans follow the same rule
(`_types.TraceSpan`, with `_types.SPAN_COPIED`).

A type or status this version does not know (written by another version) is not an error
anywhere: readers map it to UNSPECIFIED and keep its content.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "BODY_FIELDS",
    "EMITTABLE",
    "ENDINGS",
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "WIRE_NAMES",
    "EventBody",
    "EventType",
    "RunStatus",
    "body_of",
]


class RunStatus(enum.StrEnum):
    """Where a run is in its life."""

    UNSPECIFIED = "UNSPECIFIED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    WAITING = "WAITING"  # parked: a sleep, a wait for input or children; holds no worker

    @property
    def terminal(self) -> bool:
        """Whether a run in this status has ended."""
        return self in TERMINAL_STATUSES


class EventType(enum.StrEnum):
    """The kind of one event in a run's stream."""

    UNSPECIFIED = "UNSPECIFIED"
    RUN_QUEUED = "RUN_QUEUED"
    RUN_STARTED = "RUN_STARTED"
    STATUS = "STATUS"
    OUTPUT = "OUTPUT"
    COMPONENT_STARTED = "COMPONENT_STARTED"
    COMPONENT_FINISHED = "COMPONENT_FINISHED"
    RUN_RETRYING = "RUN_RETRYING"
    RUN_SUCCEEDED = "RUN_SUCCEEDED"
    RUN_FAILED = "RUN_FAILED"
    RUN_CANCELLED = "RUN_CANCELLED"
    INPUT_REQUESTED = "INPUT_REQUESTED"
    INPUT_RECEIVED = "INPUT_RECEIVED"
    RUN_WAITING = "RUN_WAITING"
    PROGRESS = "PROGRESS"
    CHILD_STARTED = "CHILD_STARTED"
    CHILD_ENDED = "CHILD_ENDED"

    @property
    def terminal(self) -> bool:
        """Whether this is a run's last event."""
        return self in TERMINAL_EVENTS


# The statuses a run ends in, and the one event each writes (the finish and cancel scripts
# write the event of the status; see _store._scripts).
ENDINGS: dict[RunStatus, EventType] = {
    RunStatus.SUCCEEDED: EventType.RUN_SUCCEEDED,
    RunStatus.FAILED: EventType.RUN_FAILED,
    RunStatus.CANCELLED: EventType.RUN_CANCELLED,
}
# Plain strings compare equal to the members (StrEnum), so these serve stored names too.
TERMINAL_STATUSES: frozenset[str] = frozenset(ENDINGS)
TERMINAL_EVENTS: frozenset[str] = frozenset(ENDINGS.values())
# What workflow code may write; the lifecycle events come from longline itself.
EMITTABLE: tuple[str, ...] = (
    EventType.STATUS,
    EventType.OUTPUT,
    EventType.COMPONENT_STARTED,
    EventType.COMPONENT_FINISHED,
    EventType.PROGRESS,
)

_WIRE = "wire"  # metadata key: the field's name in a Redis stream entry


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBody:
    """What one event says, beside its id, run, type, time and attempt. Every field is text;
    empty means absent (and is not stored)."""

    message: str = field(default="", metadata={_WIRE: "m"})  # a status line, an output chunk
    data_json: str = field(default="", metadata={_WIRE: "d"})  # a structured payload, JSON
    component: str = field(default="", metadata={_WIRE: "c"})  # the component it concerns
    span_id: str = field(default="", metadata={_WIRE: "s"})  # the span it opens or closes
    parent_span_id: str = field(default="", metadata={_WIRE: "p"})  # the span it happened in

    @property
    def data(self) -> Any:
        """The decoded structured payload, or None."""
        return json.loads(self.data_json) if self.data_json else None


BODY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EventBody))
# (field, its name in a stream entry), in declaration order.
WIRE_NAMES: tuple[tuple[str, str], ...] = tuple(
    (f.name, f.metadata[_WIRE]) for f in fields(EventBody)
)


def body_of(source: Any) -> dict[str, str]:
    """The body fields of anything that has them as attributes (an event, a proto message),
    by name: `Event(..., **body_of(msg))`."""
    return {name: getattr(source, name) for name in BODY_FIELDS}
