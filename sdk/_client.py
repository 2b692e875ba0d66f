"""The client: start runs, watch them live with automatic resume, get their results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import propagate, trace

from ._channel import bearer, env_tls_ca, env_token, open_channel
from ._errors import RunCancelled, RunFailed, Unavailable, map_rpc_error
from ._events import body_of
from ._types import (
    SPAN_COPIED,
    BuildInfo,
    Event,
    EventType,
    Run,
    RunErrorInfo,
    RunStatus,
    RunTrace,
    RunWait,
    Schedule,
    TraceSpan,
    WorkflowBuilds,
    WorkflowInfo,
)
from .v1 import (
    builds_pb2,
    builds_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
)

__all__ = ["Client", "RunHandle"]

# Codes after which a stream is resumed from its cursor rather than failed. Not CANCELLED:
# gRPC reports our own task's cancellation (Ctrl-C, a timeout) that way, and resuming then
# would swallow the cancellation and stream forever.
_RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


# Calls asked again after UNAVAILABLE (see Client._call): those that only read, and
# SendInput, which the same payload sent twice changes once.
_READS = frozenset(
    {
        "GetRun",
        "GetRunTrace",
        "ListRuns",
        "ListWorkflows",
        "ListBuilds",
        "SendInput",
        "GetSchedule",
        "ListSchedules",
    }
)

_tracer = trace.get_tracer("longline.client")


def _trace_metadata() -> list[tuple[str, str]]:
    """The caller's trace context, as gRPC metadata, so the run joins the caller's trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def _time(ts: Timestamp) -> datetime | None:
    # An aware UTC instant, shown in the local zone: a naive ToDatetime() is UTC, and
    # astimezone() would read it as local time.
    return ts.ToDatetime(tzinfo=UTC).astimezone() if ts.seconds or ts.nanos else None


_BUILD_METHODS = frozenset({"PromoteBuild", "ListBuilds"})
_SCHEDULE_METHODS = frozenset(
    {
        "CreateSchedule",
        "GetSchedule",
        "ListSchedules",
        "UpdateSchedule",
        "PauseSchedule",
        "ResumeSchedule",
        "TriggerSchedule",
        "DeleteSchedule",
    }
)
_OVERLAPS = ("SKIP", "BUFFER_ONE", "ALLOW_ALL")


def _builds_from_proto(msg: builds_pb2.WorkflowBuilds) -> WorkflowBuilds:
    return WorkflowBuilds(
        workflow=msg.workflow,
        current_build_id=msg.current_build_id,
        policy=builds_pb2.RunMovePolicy.Name(msg.policy).removeprefix("RUN_MOVE_POLICY_"),
        unserved_runs=msg.unserved_runs,
        builds=[
            BuildInfo(
                build_id=b.build_id,
                workers=b.workers,
                queued_runs=b.queued_runs,
                running_runs=b.running_runs,
                unserved_runs=b.unserved_runs,
                current=b.current,
                waiting_runs=b.waiting_runs,
            )
            for b in msg.builds
        ],
    )


# Wire values to the SDK's enums. A value this SDK does not know (a newer server's) reads as
# UNSPECIFIED rather than failing the call or the stream.
_STATUSES = {
    value: RunStatus(name.removeprefix("RUN_STATUS_"))
    for name, value in runs_pb2.RunStatus.items()
    if name.removeprefix("RUN_STATUS_") in RunStatus.__members__
}
_EVENT_TYPES = {
    value: EventType(name.removeprefix("EVENT_TYPE_"))
    for name, value in runs_pb2.EventType.items()
    if name.removeprefix("EVENT_TYPE_") in EventType.__members__
}


def run_from_proto(msg: runs_pb2.Run) -> Run:
    """The SDK's Run for a runs_pb2.Run."""
    error = None
    if msg.HasField("error") and msg.error.type:
        error = RunErrorInfo(
            type=msg.error.type,
            message=msg.error.message,
            component=msg.error.component,
            attempt=msg.error.attempt,
        )
    return Run(
        run_id=msg.run_id,
        workflow=msg.workflow,
        status=_STATUSES.get(msg.status, RunStatus.UNSPECIFIED),
        attempt=msg.attempt,
        result_json=msg.result_json,
        error=error,
        create_time=_time(msg.create_time),
        update_time=_time(msg.update_time),
        last_event_id=msg.last_event_id,
        labels=dict(msg.labels),
        input_json=msg.input_json,
        wait=_wait_from_proto(msg.wait) if msg.HasField("wait") else None,
        parent_run_id=msg.parent_run_id,
    )


def _wait_from_proto(msg: runs_pb2.RunWait) -> RunWait:
    known = msg.kind in runs_pb2.WaitKind.values() and msg.kind
    kind = runs_pb2.WaitKind.Name(msg.kind).removeprefix("WAIT_KIND_").lower() if known else ""
    return RunWait(
        kind=kind,
        input_name=msg.input_name,
        wake_time=_time(msg.wake_time) if msg.HasField("wake_time") else None,
        child_run_ids=tuple(msg.child_run_ids),
    )


def schedule_from_proto(msg: schedules_pb2.Schedule) -> Schedule:
    """The SDK's Schedule for a schedules_pb2.Schedule."""
    spec = msg.spec
    overlap = schedules_pb2.OverlapPolicy.Name(spec.overlap_policy).removeprefix("OVERLAP_POLICY_")
    return Schedule(
        schedule_id=msg.schedule_id,
        workflow=spec.workflow,
        cron=spec.cron,
        time_zone=spec.time_zone,
        input_json=spec.input_json,
        labels=dict(spec.labels),
        overlap="SKIP" if overlap == "UNSPECIFIED" else overlap,
        catchup_window=spec.catchup_window.ToMilliseconds() / 1000,
        paused=msg.paused,
        note=msg.note,
        next_tick_time=_time(msg.next_tick_time) if msg.HasField("next_tick_time") else None,
        last_tick_time=_time(msg.last_tick_time) if msg.HasField("last_tick_time") else None,
        last_run_id=msg.last_run_id,
        started_runs=msg.started_runs,
        skipped_ticks=msg.skipped_ticks,
        missed_ticks=msg.missed_ticks,
        buffered_tick_time=(
            _time(msg.buffered_tick_time) if msg.HasField("buffered_tick_time") else None
        ),
        last_error=msg.last_error,
        create_time=_time(msg.create_time) if msg.HasField("create_time") else None,
        update_time=_time(msg.update_time) if msg.HasField("update_time") else None,
    )


def _schedule_spec(
    workflow: str,
    cron: str,
    time_zone: str,
    input: Any,
    labels: dict[str, str] | None,
    overlap: str,
    catchup_window: float | None,
) -> schedules_pb2.ScheduleSpec:
    if overlap.upper() not in _OVERLAPS:
        raise ValueError(f"overlap must be one of {', '.join(_OVERLAPS)}, not {overlap!r}")
    spec = schedules_pb2.ScheduleSpec(
        cron=cron,
        time_zone=time_zone,
        workflow=workflow,
        input_json=json.dumps(input, allow_nan=False),
        labels=labels or {},
        overlap_policy=schedules_pb2.OverlapPolicy.Value(f"OVERLAP_POLICY_{overlap.upper()}"),
    )
    if catchup_window is not None:
        spec.catchup_window.FromMilliseconds(round(catchup_window * 1000))
    return spec


def event_from_proto(msg: runs_pb2.RunEvent) -> Event:
    """The SDK's Event for a runs_pb2.RunEvent."""
    return Event(
        event_id=msg.event_id,
        run_id=msg.run_id,
        type=_EVENT_TYPES.get(msg.type, EventType.UNSPECIFIED),
        time=_time(msg.time),
        attempt=msg.attempt,
        **body_of(msg),
    )


def span_from_proto(msg: runs_pb2.TraceSpan) -> TraceSpan:
    """The SDK's TraceSpan for a runs_pb2.TraceSpan."""
    return TraceSpan(
        kind=runs_pb2.TraceSpanKind.Name(msg.kind).removeprefix("TRACE_SPAN_KIND_"),
        status=runs_pb2.TraceSpanStatus.Name(msg.status).removeprefix("TRACE_SPAN_STATUS_"),
        start_time=_time(msg.start_time),
        end_time=_time(msg.end_time) if msg.HasField("end_time") else None,
        **{name: getattr(msg, name) for name in SPAN_COPIED},
    )


class Client:
    """A connection to a longline control plane (`async with longline.Client(...)`).

    `target` is a gRPC target, e.g. "localhost:50051", or several replicas separated
    by commas: when one becomes unreachable the client moves to the next, and an
    events() iterator resumes there from its last event. `resume_for` bounds how
    long an events() iterator keeps reconnecting, and how long a read (describe, result,
    trace, the lists) keeps asking again after UNAVAILABLE once a replica has answered
    this client, before it gives up.

    `token` is sent as a bearer token with every call (default: LONGLINE_TOKEN). `tls`
    connects over TLS, verifying the server against `tls_ca` (a PEM file; default:
    LONGLINE_TLS_CA, else the system's roots); giving `tls_ca` implies `tls`.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        token: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
        resume_for: float = 60.0,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self.targets = [t.strip() for t in target.split(",") if t.strip()]
        if not self.targets:
            raise ValueError("Client needs a target such as 'localhost:50051'")
        self.resume_for = resume_for
        self._options = channel_options or []
        self._auth = bearer(env_token() if token is None else token)
        self._tls_ca = env_tls_ca() if tls_ca is None else tls_ca
        self._tls = tls or bool(self._tls_ca)
        self._current = 0
        self._answered = False  # a replica has answered a call (see _call)
        self._channels: dict[str, grpc.aio.Channel] = {}  # one per replica, reused
        self._closed = False
        self._connect()

    @property
    def target(self) -> str:
        """The replica this client talks to now."""
        return self.targets[self._current]

    def _connect(self) -> None:
        channel = self._channels.get(self.target)
        if channel is None:
            channel = self._channels[self.target] = open_channel(
                self.target, tls=self._tls, tls_ca=self._tls_ca, options=self._options
            )
        self._channel = channel
        self._stub = runs_pb2_grpc.RunServiceStub(self._channel)
        self._builds = builds_pb2_grpc.BuildServiceStub(self._channel)
        self._schedules = schedules_pb2_grpc.ScheduleServiceStub(self._channel)

    def _failover(self) -> None:
        """Move to the next replica (a no-op with only one)."""
        if len(self.targets) > 1:
            self._current = (self._current + 1) % len(self.targets)
            self._connect()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; safe to call twice."""
        if not self._closed:
            self._closed = True
            for channel in self._channels.values():
                await channel.close()

    @property
    def stub(self) -> runs_pb2_grpc.RunServiceStub:
        """The generated RunService stub, for what the SDK does not wrap."""
        return self._stub

    async def _call(
        self,
        method: str,
        request: Any,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Any:
        delay = 0.05
        give_up = asyncio.get_running_loop().time() + self.resume_for
        while True:
            stub = (
                self._builds
                if method in _BUILD_METHODS
                else self._schedules
                if method in _SCHEDULE_METHODS
                else self._stub
            )
            try:
                reply = await getattr(stub, method)(
                    request, timeout=timeout, metadata=(*metadata, *self._auth)
                )
                self._answered = True
                return reply
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    self._answered = True
                    raise map_rpc_error(exc) from exc
                self._failover()  # the next call goes elsewhere
                task = asyncio.current_task()
                if (
                    method not in _READS
                    or not self._answered
                    or (task is not None and task.cancelling())
                    or asyncio.get_running_loop().time() + delay > give_up
                ):
                    raise map_rpc_error(exc) from exc
            # A read is asked again, after a wait that doubles up to 2 s, for up to
            # resume_for seconds: a replica restarting or a Redis failing over is waited out.
            # Not before any replica has answered this client: a wrong address, a CA it
            # does not trust or a server not up yet is said at once.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _launch(
        self,
        method: str,
        request_type: type[Any],
        workflow: str,
        input: Any,
        idempotency_key: str,
        labels: dict[str, str] | None,
    ) -> Any:
        """StartRun or RunWorkflow, in a client span whose context travels with the call."""
        with _tracer.start_as_current_span(
            f"{method} {workflow}", kind=trace.SpanKind.CLIENT
        ) as span:
            response = await self._call(
                method,
                request_type(
                    workflow=workflow,
                    input_json=json.dumps(input),
                    idempotency_key=idempotency_key,
                    labels=labels or {},
                ),
                metadata=_trace_metadata(),
            )
            span.set_attribute("longline.run_id", response.run.run_id)
        return response

    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        idempotency_key: str = "",
        labels: dict[str, str] | None = None,
    ) -> RunHandle:
        """Queue a run and return at once; `handle.created` is False on an idempotency hit."""
        response = await self._launch(
            "StartRun", runs_pb2.StartRunRequest, workflow, input, idempotency_key, labels
        )
        return RunHandle(self, response.run.run_id, created=response.created)

    async def run(
        self,
        workflow: str,
        input: Any = None,
        *,
        idempotency_key: str = "",
        labels: dict[str, str] | None = None,
    ) -> Any:
        """Start a run, wait for it to end, and return its decoded result (raises RunFailed)."""
        response = await self._launch(
            "RunWorkflow", runs_pb2.RunWorkflowRequest, workflow, input, idempotency_key, labels
        )
        handle = RunHandle(self, response.run.run_id, created=response.created)
        return await handle.result(run_from_proto(response.run))

    def get_run(self, run_id: str) -> RunHandle:
        """A handle to a run started anywhere."""
        return RunHandle(self, run_id)

    async def list_runs(
        self,
        *,
        workflow: str = "",
        status: RunStatus | str | None = None,
        page_size: int = 50,
        page_token: str = "",
        full: bool = False,
        created_before: datetime | None = None,
    ) -> tuple[list[Run], str]:
        """One page of runs, newest first, and the token of the next page ('' at the end).

        Runs come without their input_json and result_json unless `full` (describe() has
        them). A page may hold fewer than `page_size` runs and still have a next page.
        With `created_before` (an aware datetime) the list starts from that time back.
        """
        status_value = f"RUN_STATUS_{RunStatus(status)}" if status else None
        request = runs_pb2.ListRunsRequest(
            workflow=workflow,
            status=status_value,
            page_size=page_size,
            page_token=page_token,
            view=runs_pb2.RUN_VIEW_FULL if full else runs_pb2.RUN_VIEW_BASIC,
        )
        if created_before is not None:
            if created_before.tzinfo is None:
                raise ValueError("created_before must be an aware datetime (with tzinfo)")
            request.created_before.FromDatetime(created_before)
        response = await self._call("ListRuns", request)
        return [run_from_proto(r) for r in response.runs], response.next_page_token

    async def promote_build(
        self, workflow: str, build_id: str, *, policy: str = "", force: bool = False
    ) -> tuple[WorkflowBuilds, str]:
        """Make `build_id` the current build of `workflow`: new runs go to its workers.

        `policy` ("WHEN_UNSERVED" or "NEVER"; '' keeps the workflow's) says what happens to
        runs pinned to a build that no worker serves any more. Without `force`, a build with
        no live worker is refused (FailedPrecondition). Returns (the workflow's builds now,
        the build that was current before, '' if none).
        """
        if policy and policy.upper() not in ("WHEN_UNSERVED", "NEVER"):
            raise ValueError(f"policy must be 'WHEN_UNSERVED' or 'NEVER', not {policy!r}")
        response = await self._call(
            "PromoteBuild",
            builds_pb2.PromoteBuildRequest(
                workflow=workflow,
                build_id=build_id,
                policy=f"RUN_MOVE_POLICY_{policy.upper()}" if policy else None,
                force=force,
            ),
        )
        return _builds_from_proto(response.workflow), response.previous_build_id

    async def list_builds(self, workflow: str = "") -> list[WorkflowBuilds]:
        """Each workflow's current build and its builds' workers and runs."""
        response = await self._call("ListBuilds", builds_pb2.ListBuildsRequest(workflow=workflow))
        return [_builds_from_proto(w) for w in response.workflows]

    async def create_schedule(
        self,
        schedule_id: str,
        workflow: str,
        *,
        cron: str,
        time_zone: str = "",
        input: Any = None,
        labels: dict[str, str] | None = None,
        overlap: str = "SKIP",
        catchup_window: float | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Run `workflow` with `input` on every tick of `cron` in `time_zone` (see
        `Schedule`); exactly one run per tick, whichever replica starts it. AlreadyExists
        when this tenant has a schedule of that id; InvalidArgument for a bad cron or time
        zone; NotFound for a workflow no worker announced."""
        response = await self._call(
            "CreateSchedule",
            schedules_pb2.CreateScheduleRequest(
                schedule_id=schedule_id,
                spec=_schedule_spec(
                    workflow, cron, time_zone, input, labels, overlap, catchup_window
                ),
                paused=paused,
            ),
        )
        return schedule_from_proto(response.schedule)

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """One schedule, with where it stands."""
        response = await self._call(
            "GetSchedule", schedules_pb2.GetScheduleRequest(schedule_id=schedule_id)
        )
        return schedule_from_proto(response.schedule)

    async def list_schedules(self) -> list[Schedule]:
        """Every schedule of this tenant, by id."""
        out: list[Schedule] = []
        token = ""
        while True:
            response = await self._call(
                "ListSchedules", schedules_pb2.ListSchedulesRequest(page_size=500, page_token=token)
            )
            out += [schedule_from_proto(s) for s in response.schedules]
            token = response.next_page_token
            if not token:
                return out

    async def update_schedule(
        self,
        schedule_id: str,
        workflow: str,
        *,
        cron: str,
        time_zone: str = "",
        input: Any = None,
        labels: dict[str, str] | None = None,
        overlap: str = "SKIP",
        catchup_window: float | None = None,
    ) -> Schedule:
        """Replace what a schedule does; its next tick is computed again from now."""
        response = await self._call(
            "UpdateSchedule",
            schedules_pb2.UpdateScheduleRequest(
                schedule_id=schedule_id,
                spec=_schedule_spec(
                    workflow, cron, time_zone, input, labels, overlap, catchup_window
                ),
            ),
        )
        return schedule_from_proto(response.schedule)

    async def pause_schedule(self, schedule_id: str, note: str = "") -> Schedule:
        """Stop a schedule's ticks until resumed (ticks meanwhile are not run later)."""
        response = await self._call(
            "PauseSchedule", schedules_pb2.PauseScheduleRequest(schedule_id=schedule_id, note=note)
        )
        return schedule_from_proto(response.schedule)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Let a paused schedule tick again, from now."""
        response = await self._call(
            "ResumeSchedule", schedules_pb2.ResumeScheduleRequest(schedule_id=schedule_id)
        )
        return schedule_from_proto(response.schedule)

    async def trigger_schedule(self, schedule_id: str) -> RunHandle:
        """Start one run of the schedule now, outside its ticks; its handle."""
        response = await self._call(
            "TriggerSchedule", schedules_pb2.TriggerScheduleRequest(schedule_id=schedule_id)
        )
        return RunHandle(self, response.run.run_id, created=True)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule; the runs it started go on."""
        await self._call(
            "DeleteSchedule", schedules_pb2.DeleteScheduleRequest(schedule_id=schedule_id)
        )

    async def list_workflows(self) -> list[WorkflowInfo]:
        """Every workflow some worker announced, with its live worker count."""
        out: list[WorkflowInfo] = []
        token = ""
        while True:
            response = await self._call(
                "ListWorkflows",
                runs_pb2.ListWorkflowsRequest(page_size=1000, page_token=token),
            )
            out += [
                WorkflowInfo(w.name, w.description, w.workers, tuple(w.builds))
                for w in response.workflows
            ]
            token = response.next_page_token
            if not token:
                return out


class RunHandle:
    """One run: its state, its events, its result."""

    def __init__(self, client: Client, run_id: str, *, created: bool | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self.created = created

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"

    async def describe(self) -> Run:
        """The run's current state."""
        response = await self._client._call("GetRun", runs_pb2.GetRunRequest(run_id=self.run_id))
        return run_from_proto(response.run)

    async def trace(self) -> RunTrace:
        """The run's trace tree: attempts, component calls, durations, tokens, errors."""
        response = await self._client._call(
            "GetRunTrace", runs_pb2.GetRunTraceRequest(run_id=self.run_id)
        )
        spans = [span_from_proto(s) for s in response.spans]
        return RunTrace(
            run_from_proto(response.run),
            spans,
            response.input_tokens,
            response.output_tokens,
            truncated=response.truncated,
        )

    async def send_input(self, name: str, payload: Any = None) -> Run:
        """Answer the run's request for input `name` (ctx.wait_for_input) with a JSON-able
        payload; the run goes on with it. Sent before the run asks, it is kept for it.
        Sending the same payload again is harmless; FailedPrecondition for another payload
        after the first (reason INPUT_ALREADY_RECEIVED), after the request timed out
        (INPUT_TIMED_OUT) or once the run ended; InvalidArgument naming the field for a
        payload that does not match the request's schema (INPUT_DOES_NOT_MATCH_SCHEMA)."""
        response = await self._client._call(
            "SendInput",
            runs_pb2.SendInputRequest(
                run_id=self.run_id, name=name, payload_json=json.dumps(payload)
            ),
        )
        return run_from_proto(response.run)

    async def read_token(self, ttl: float = 600) -> tuple[str, datetime]:
        """A token that may only read this run (its state, trace and events), and when it
        expires: for a page in a browser, which then never holds the tenant's token. It
        lives `ttl` seconds (at most 3600) and works as a bearer token or, over HTTP, as
        `?access_token=` (CreateRunToken; FailedPrecondition RUN_TOKENS_OFF when the
        control planes have no LONGLINE_RUN_TOKEN_SECRET)."""
        response = await self._client._call(
            "CreateRunToken",
            runs_pb2.CreateRunTokenRequest(run_id=self.run_id, ttl_seconds=math.ceil(ttl)),
        )
        return response.token, response.expire_time.ToDatetime(tzinfo=UTC)

    async def cancel(self, reason: str = "") -> Run:
        """Cancel the run (FailedPrecondition if it already ended)."""
        response = await self._client._call(
            "CancelRun",
            runs_pb2.CancelRunRequest(run_id=self.run_id, reason=reason),
        )
        return run_from_proto(response.run)

    async def events(self, after: str | None = None) -> AsyncIterator[Event]:
        """The run's events after `after` (default: from the first), live, to the terminal one.

        A dropped connection is resumed from the last event seen, with backoff, for up
        to the client's `resume_for` seconds: no event is missed or repeated.
        """
        cursor = after or ""
        delay = 0.05
        failing_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            call = self._client.stub.StreamRun(
                runs_pb2.StreamRunRequest(run_id=self.run_id, after_event_id=cursor),
                metadata=self._client._auth,
            )
            try:
                while (response := await call.read()) is not grpc.aio.EOF:
                    event = event_from_proto(response.event)
                    cursor = event.event_id
                    failing_since, delay = None, 0.05
                    if event.type.terminal:
                        # The server ends the stream right after it: read that end first, so
                        # the call ends as it should on both sides rather than cancelled.
                        with contextlib.suppress(grpc.aio.AioRpcError):
                            await call.read()
                        yield event
                        return
                    yield event
                return  # the server ended the stream: the run had ended
            except grpc.aio.AioRpcError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                if exc.code() not in _RESUMABLE:
                    raise map_rpc_error(exc) from exc
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._client._failover()
                now = loop.time()
                failing_since = failing_since or now
                if now - failing_since > self._client.resume_for:
                    raise Unavailable(
                        exc.code().name,
                        f"gave up resuming run {self.run_id} after "
                        f"{self._client.resume_for:g} s: {exc.details()}",
                    ) from exc
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
            finally:
                call.cancel()

    async def result(self, run: Run | None = None) -> Any:
        """Wait for the run to end; its decoded result, or RunFailed / RunCancelled."""
        run = run or await self.describe()
        if not run.status.terminal:
            async for _ in self.events(after=run.last_event_id):
                pass
            run = await self.describe()
        if run.status is RunStatus.SUCCEEDED:
            return run.result
        if run.status is RunStatus.CANCELLED:
            raise RunCancelled(run)
        raise RunFailed(run)
