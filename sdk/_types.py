"""Small value objects the SDK returns: runs, events, workflows. Never protobuf messages."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class RunStatus(enum.StrEnum):
    """Where a run is in its life."""

    UNSPECIFIED = "UNSPECIFIED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether a run in this status has ended."""
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


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

    @property
    def terminal(self) -> bool:
        """Whether this is a run's last event."""
        return self in (EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELLED)


@dataclass(frozen=True)
class RunErrorInfo:
    """Why a run failed: the exception's type and message, the component, the attempt."""

    type: str
    message: str
    component: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class Run:
    """A snapshot of one run."""

    run_id: str
    workflow: str
    status: RunStatus
    attempt: int
    result_json: str = ""
    error: RunErrorInfo | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    last_event_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    input_json: str = ""

    @property
    def result(self) -> Any:
        """The decoded result (None until the run SUCCEEDED)."""
        return json.loads(self.result_json) if self.result_json else None


@dataclass(frozen=True)
class Event:
    """One event of a run. Pass `event_id` as `after=` to resume from it."""

    event_id: str
    run_id: str
    type: EventType
    time: datetime | None
    attempt: int
    message: str = ""
    data_json: str = ""
    component: str = ""
    span_id: str = ""
    parent_span_id: str = ""

    @property
    def data(self) -> Any:
        """The decoded structured payload, or None."""
        return json.loads(self.data_json) if self.data_json else None


@dataclass(frozen=True)
class TraceSpan:
    """One node of a run's trace: an attempt (kind "ATTEMPT") or a component call."""

    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attempt: int
    step: str
    start_time: datetime | None
    end_time: datetime | None
    status: str  # OK, ERROR, RUNNING, INTERRUPTED, REPLAYED
    error: str = ""
    tries: int = 0
    cache_hit: bool = False
    model: str = ""
    provider: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    worker: str = ""

    @property
    def duration(self) -> float | None:
        """Seconds, once ended."""
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()


@dataclass(frozen=True)
class RunTrace:
    """A run's trace tree, rebuilt from its events; spans come parents first."""

    run: Run
    spans: list[TraceSpan]
    input_tokens: int
    output_tokens: int
    truncated: bool = False  # the run has more events than a trace reads: later ones missing

    def children(self, span_id: str) -> list[TraceSpan]:
        """The spans directly under span_id ('' for the attempts)."""
        return [s for s in self.spans if s.parent_span_id == span_id]


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow some worker announced, and how many live workers serve it."""

    name: str
    description: str
    workers: int


@dataclass(frozen=True)
class BuildInfo:
    """One build of a workflow: its live workers (draining ones excluded) and its runs."""

    build_id: str
    workers: int
    queued_runs: int
    running_runs: int
    unserved_runs: int  # queued runs no live worker will take as things stand
    current: bool


@dataclass(frozen=True)
class WorkflowBuilds:
    """Where a workflow's new runs go, what happens to pinned runs, and its builds."""

    workflow: str
    current_build_id: str  # '' when none was promoted: any worker takes new runs
    policy: str  # "WHEN_UNSERVED" or "NEVER" (see BuildService in builds.proto)
    builds: list[BuildInfo]
    unserved_runs: int
