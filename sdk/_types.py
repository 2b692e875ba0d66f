"""Small value objects the SDK returns: runs, events, workflows. Never protobuf messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ._events import EventBody, EventType, RunStatus

__all__ = [
    "SPAN_COPIED",
    "BuildInfo",
    "Event",
    "EventType",
    "Run",
    "RunErrorInfo",
    "RunStatus",
    "RunTrace",
    "RunWait",
    "Schedule",
    "TraceSpan",
    "WorkflowBuilds",
    "WorkflowInfo",
]


@dataclass(frozen=True)
class RunErrorInfo:
    """Why a run failed: the exception's type and message, the component, the attempt."""

    type: str
    message: str
    component: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class RunWait:
    """What a WAITING run waits for: `kind` "sleep", "input" or "child", the input's name,
    when it wakes by itself (the sleep's end, the input's timeout; None: no timer), and the
    child runs it waits for (it wakes when any one of them ends)."""

    kind: str
    input_name: str = ""
    wake_time: datetime | None = None
    child_run_ids: tuple[str, ...] = ()


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
    wait: RunWait | None = None  # set while the run is WAITING
    parent_run_id: str = ""  # the run that started this one as its child

    @property
    def result(self) -> Any:
        """The decoded result (None until the run SUCCEEDED)."""
        return json.loads(self.result_json) if self.result_json else None


@dataclass(frozen=True, slots=True)
class Event(EventBody):
    """One event of a run. Pass `event_id` as `after=` to resume from it. What it says
    (message, data_json and `data`, component, span ids) is its `EventBody`."""

    event_id: str
    run_id: str
    type: EventType
    time: datetime | None
    attempt: int


@dataclass(frozen=True)
class TraceSpan:
    """One node of a run's trace: an attempt (kind "ATTEMPT"), a component call, or a child
    run the run started (kind "CHILD_RUN"; its attempts and steps nest under it)."""

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
    run_id: str = ""  # the run it belongs to: the traced run, or one of its child runs

    @property
    def duration(self) -> float | None:
        """Seconds, once ended."""
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()


# The fields both forms of a span (this one and the proto's) hold under the same name and
# type; kind, status and the times are converted.
SPAN_COPIED: tuple[str, ...] = tuple(
    f.name for f in fields(TraceSpan) if f.name not in ("kind", "status", "start_time", "end_time")
)


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
    builds: tuple[str, ...] = ()  # the builds its live workers run ("" for none declared)


@dataclass(frozen=True)
class BuildInfo:
    """One build of a workflow: its live workers (draining ones excluded) and its runs."""

    build_id: str
    workers: int
    queued_runs: int
    running_runs: int
    unserved_runs: int  # queued runs no live worker will take as things stand
    current: bool
    waiting_runs: int = 0  # parked runs pinned to it: they wake into its queue


@dataclass(frozen=True)
class WorkflowBuilds:
    """Where a workflow's new runs go, what happens to pinned runs, and its builds."""

    workflow: str
    current_build_id: str  # '' when none was promoted: any worker takes new runs
    policy: str  # "WHEN_UNSERVED" or "NEVER" (see BuildService in builds.proto)
    builds: list[BuildInfo]
    unserved_runs: int


@dataclass(frozen=True)
class Schedule:
    """A cron schedule and where it stands (`Client.create_schedule` and friends).

    What it does: `cron` (five fields, six with seconds first, or @daily and the like) read
    in `time_zone` (IANA; '' for UTC), the `workflow` each tick runs with `input_json` and
    `labels`, `overlap` ("SKIP", "BUFFER_ONE" or "ALLOW_ALL": what a tick does while the
    last tick's run has not ended) and `catchup_window` (seconds: ticks missed while nothing
    ran are run late when at most this old). Where it stands: `paused` (and its `note`),
    the next and last tick, the last run started, and its counts of runs started, ticks
    skipped (by the overlap policy) and ticks missed (past the catch-up window).
    """

    schedule_id: str
    workflow: str
    cron: str
    time_zone: str = ""
    input_json: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    overlap: str = "SKIP"
    catchup_window: float = 3600.0
    paused: bool = False
    note: str = ""
    next_tick_time: datetime | None = None
    last_tick_time: datetime | None = None
    last_run_id: str = ""
    started_runs: int = 0
    skipped_ticks: int = 0
    missed_ticks: int = 0
    buffered_tick_time: datetime | None = None
    last_error: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def input(self) -> Any:
        """The decoded input each run gets."""
        return json.loads(self.input_json) if self.input_json else None
