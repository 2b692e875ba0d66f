"""RunService: start, inspect, list, cancel and stream runs. Everything is read from Redis."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import propagate, trace

from longline._events import body_of
from longline._store import (
    PAGE_BYTES,
    PAGE_EVENTS,
    CancelNotice,
    EventPage,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    RateLimitedError,
    RedisError,
    RunRecord,
    Store,
    StoredEvent,
    TenantLimits,
    TooLargeError,
    event_id_key,
    parse_event_id,
)
from longline._types import SPAN_COPIED, TraceSpan
from longline._waits import canonical_json, check_input_name, schema_error
from longline.v1 import runs_pb2, runs_pb2_grpc

from . import _trace
from ._auth import current
from ._hub import EventHub, Subscription
from ._monitor import cancel_children
from ._run_tokens import RunTokens
from ._settings import ControlPlaneSettings

_tracer = trace.get_tracer("longline.control_plane")
DEFAULT_PAGE_SIZE = 50
MAX_IDEMPOTENCY_KEY = 256
# RunWorkflow answers this share of the caller's deadline early (within these bounds, in
# seconds), so the answer arrives in time even from a busy replica.
_DEADLINE_SHARE, _DEADLINE_MARGIN, _DEADLINE_MARGIN_CAP = 0.1, 0.25, 1.0
# A cursor up to this far ahead of Redis's clock may come from a server whose clock ran a
# little ahead (another primary, before a failover).
_CURSOR_SLACK_MS = 60_000
_TRACE_REPLY_BYTES = 3 * 1024 * 1024  # spans in one GetRunTrace reply
# GetRunTrace reads at most this many of a run's events, and about this many bytes of them;
# past that its answer says it is truncated.
_TRACE_MOST_CHILDREN = 500  # child runs one trace nests (each counts its events too)
_TRACE_MOST_EVENTS = 20_000
_TRACE_MOST_BYTES = 8 * 1024 * 1024
# A ListRuns page ends before its runs' fields pass this many bytes (at least one run), well
# under the 4 MiB that gRPC clients accept in one message by default.
_LIST_MOST_BYTES = 2 * 1024 * 1024
_LATEST_TIMESTAMP_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z

log = logging.getLogger("longline.control_plane.runs")


def _not_json(constant: str) -> object:
    """NaN, Infinity and -Infinity: Python reads them, JSON has no such values."""
    raise ValueError(f"{constant} is not a JSON value")


def _timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _run_status(status: str) -> runs_pb2.RunStatus:
    """The wire value of a stored status; one this version does not know is UNSPECIFIED."""
    name = f"RUN_STATUS_{status}"
    known = name in runs_pb2.RunStatus.keys()
    value: runs_pb2.RunStatus = runs_pb2.RunStatus.Value(
        name if known else "RUN_STATUS_UNSPECIFIED"
    )
    return value


def run_to_proto(r: RunRecord) -> runs_pb2.Run:
    """The wire form of a run."""
    msg = runs_pb2.Run(
        run_id=r.run_id,
        workflow=r.workflow,
        status=_run_status(r.status),
        attempt=r.attempt,
        result_json=r.result_json,
        create_time=_timestamp(r.create_ms),
        update_time=_timestamp(r.update_ms),
        last_event_id=r.last_event_id,
        labels=r.labels,
        input_json=r.input_json,
        parent_run_id=r.parent_run_id,
    )
    if r.status == "WAITING":
        kind = f"WAIT_KIND_{r.wait_kind.upper()}"
        msg.wait.kind = (
            runs_pb2.WaitKind.Value(kind)
            if kind in runs_pb2.WaitKind.keys()
            else runs_pb2.WAIT_KIND_UNSPECIFIED
        )
        msg.wait.input_name = r.wait_name
        msg.wait.child_run_ids.extend(r.wait_children)
        # (a wait for children has a check-up timer, not a time it wakes by itself)
        if r.wait_kind != "child" and 0 < r.wake_ms < _LATEST_TIMESTAMP_MS:
            msg.wait.wake_time.FromMilliseconds(r.wake_ms)
    if r.error_type:
        msg.error.CopyFrom(
            runs_pb2.RunError(
                type=r.error_type,
                message=r.error_message,
                component=r.error_component,
                attempt=r.attempt,
            )
        )
    return msg


_EVENT_TYPES = {
    name.removeprefix("EVENT_TYPE_"): value for name, value in runs_pb2.EventType.items()
}


def event_to_proto(run_id: str, e: StoredEvent) -> runs_pb2.RunEvent:
    """The wire form of an event. A type this server does not know (written by workflow code,
    or by an older or newer version) goes out as EVENT_TYPE_UNSPECIFIED, with its content."""
    return runs_pb2.RunEvent(
        event_id=e.event_id,
        run_id=run_id,
        type=_EVENT_TYPES.get(e.type, runs_pb2.EVENT_TYPE_UNSPECIFIED),
        time=_timestamp(e.time_ms),
        attempt=e.attempt,
        **body_of(e),
    )


@dataclasses.dataclass
class _TraceBudget:
    """What one GetRunTrace has read so far, over the run and its children."""

    events: int = 0
    bytes: int = 0
    children: int = 0

    @property
    def exhausted(self) -> bool:
        return self.events >= _TRACE_MOST_EVENTS or self.bytes >= _TRACE_MOST_BYTES


def span_to_proto(s: TraceSpan) -> runs_pb2.TraceSpan:
    """The wire form of a trace span."""
    msg = runs_pb2.TraceSpan(
        kind=runs_pb2.TraceSpanKind.Value(f"TRACE_SPAN_KIND_{s.kind}"),
        status=runs_pb2.TraceSpanStatus.Value(f"TRACE_SPAN_STATUS_{s.status}"),
        **{name: getattr(s, name) for name in SPAN_COPIED},
    )
    if s.start_time is not None:
        msg.start_time.FromDatetime(s.start_time)
    if s.end_time is not None:
        msg.end_time.FromDatetime(s.end_time)
    return msg


def _json_of(message: Message, text_field: str, value_field: str) -> str:
    """The JSON text a request carries in `text_field`, or in `value_field` (a
    google.protobuf.Value, as JSON transcoding fills it); both at once is refused."""
    text = str(getattr(message, text_field))
    if not message.HasField(value_field):
        return text
    if text:
        raise InvalidArgumentError(
            f"set {text_field} or {value_field}, not both", "INPUT_GIVEN_TWICE"
        )
    return str(json_format.MessageToJson(getattr(message, value_field), indent=None))


def _require_run_id(run_id: str) -> str:
    if not run_id:
        raise InvalidArgumentError("run_id is required", "RUN_ID_REQUIRED")
    if len(run_id) > 128 or "{" in run_id or "}" in run_id:
        raise NotFoundError(f"run {run_id[:128]!r} not found", "RUN_NOT_FOUND")
    reader = current()
    if reader.run_id and reader.run_id != run_id:
        raise PermissionDeniedError(
            f"this run token reads run {reader.run_id} only, not {run_id[:128]!r}",
            "RUN_TOKEN_OTHER_RUN",
        )
    return run_id


def _page_size(requested: int, most: int) -> int:
    if requested < 0:
        raise InvalidArgumentError(
            f"page_size must not be negative, got {requested}", "INVALID_PAGE_SIZE"
        )
    return min(requested or DEFAULT_PAGE_SIZE, most)


_BAD_TOKEN = (
    "page_token is not one this server gave out: pass next_page_token from the previous "
    "response unchanged, or leave it empty for the first page"
)
_CURSOR_MS = re.compile(r"[0-9]{1,20}")


def _encode_token(*parts: str) -> str:
    return base64.urlsafe_b64encode("\x1f".join(parts).encode()).decode()


def _decode_token(token: str, n: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(token.encode()).decode().split("\x1f")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        parts = []
    if len(parts) != n:
        raise InvalidArgumentError(_BAD_TOKEN, "INVALID_PAGE_TOKEN")
    return parts


@dataclasses.dataclass(frozen=True)
class OpenStream:
    """A run's events from a cursor, checked and ready to send (RunServicer.open_stream),
    holding one of its tenant's stream slots: `close()` it on every path, sent or not.
    `ended`: the run had ended and nothing follows the cursor, so nothing will come."""

    run_id: str
    ended: bool
    events: AsyncGenerator[StoredEvent, None]
    give_back: Callable[[], None]
    # Ends the live subscription when the events never began (a no-op once they did).
    unsubscribe: Callable[[], Awaitable[None]] | None = None

    async def close(self) -> None:
        """Stop the events (their watch on the hub goes) and give the slot back. Events
        another task is still reading (it was cancelled, and is leaving) are closed by that
        task as it leaves."""
        try:
            if not getattr(self.events, "ag_running", False):
                await self.events.aclose()
        finally:
            self.give_back()
            if self.unsubscribe is not None:
                await self.unsubscribe()


def _nothing() -> None:
    pass


async def _listed(events: Sequence[StoredEvent]) -> AsyncGenerator[StoredEvent, None]:
    for event in events:
        yield event


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    """The client-facing API of one control-plane replica."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        settings: ControlPlaneSettings,
        run_tokens: RunTokens | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._settings = settings
        self._run_tokens = run_tokens or RunTokens()
        self._limits = TenantLimits(
            max_queued=settings.max_queued_per_tenant,
            start_rate=settings.start_rate_per_tenant,
            start_burst=settings.start_burst_per_tenant,
        )
        self._streams: dict[str, int] = {}  # tenant -> its open streams on this replica

    def _take_stream_slot(self) -> Callable[[], None]:
        """Count a stream against its tenant's limit on this replica (RateLimitedError when
        the tenant holds its limit); the function returned gives the slot back (once)."""
        tenant = current().tenant
        most = self._settings.max_streams_per_tenant
        held = self._streams.get(tenant, 0)
        if most and held >= most:
            raise RateLimitedError(
                f"this tenant has {held} open streams on this control plane, its limit: close "
                "some, or ask the operator to raise --max-streams-per-tenant",
                "TOO_MANY_STREAMS",
                retry_after=1.0,
            )
        self._streams[tenant] = held + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self._streams[tenant] -= 1
            if not self._streams[tenant]:
                del self._streams[tenant]

        return give_back

    @contextlib.contextmanager
    def _stream_slot(self) -> Iterator[None]:
        """Count an open StreamRun or RunWorkflow against its tenant's limit on this replica."""
        give_back = self._take_stream_slot()
        try:
            yield
        finally:
            give_back()

    async def _start(
        self,
        request: runs_pb2.StartRunRequest | runs_pb2.RunWorkflowRequest,
        metadata: Sequence[tuple[str, str]],
        before: Callable[[str], Awaitable[None]] | None = None,
    ) -> tuple[RunRecord, bool]:
        """Check the request and create the run (or find it by its idempotency key).
        `before` is awaited with the new run's id before the run is made."""
        if not request.workflow:
            raise InvalidArgumentError(
                "workflow is required: the name of a workflow to run", "WORKFLOW_REQUIRED"
            )
        input_json = _json_of(request, "input_json", "input")
        size = len(input_json.encode())
        if size > self._settings.max_input_bytes:
            raise TooLargeError(
                f"input_json is {size} bytes, over the limit of {self._settings.max_input_bytes} "
                "bytes: pass a reference to large data (a URL or object key) instead",
                "INPUT_TOO_LARGE",
            )
        input_json = input_json or "null"
        try:
            json.loads(input_json, parse_constant=_not_json)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgumentError(
                f"input_json is not valid JSON: {exc}", "INPUT_NOT_JSON"
            ) from None
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgumentError(
                f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters",
                "INVALID_IDEMPOTENCY_KEY",
            )
        most_labels, label_bytes = self._settings.max_labels, self._settings.max_label_bytes
        if len(request.labels) > most_labels:
            raise InvalidArgumentError(
                f"at most {most_labels} labels are allowed, got {len(request.labels)}",
                "INVALID_LABELS",
            )
        for k, v in request.labels.items():
            if not k or len(k.encode()) > label_bytes or len(v.encode()) > label_bytes:
                raise InvalidArgumentError(
                    f"label keys must be non-empty and keys and values at most {label_bytes} "
                    f"bytes (label {k[:40]!r})",
                    "INVALID_LABELS",
                )
        tenant = current().tenant
        new_id = self._store.runs.new_run_id(request.idempotency_key, tenant)
        if before is not None:
            await before(new_id)
        # The run's span is a child of the caller's (from the gRPC span, or the traceparent
        # it sent); attempts on workers become its children through the stored traceparent.
        caller_span = trace.get_current_span().get_span_context()
        parent = None if caller_span.is_valid else propagate.extract(dict(metadata))
        run_span = _tracer.start_span(
            f"run {request.workflow}",
            context=parent,
            attributes={"longline.run_id": new_id, "longline.workflow": request.workflow},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(run_span))
        try:
            outcome = await self._store.runs.create(
                new_id,
                request.workflow,
                input_json,
                dict(request.labels),
                request.idempotency_key,
                carrier.get("traceparent", ""),
                tenant,
                self._limits,
                retention_ms=int(self._settings.retention * 1000),
            )
        finally:
            run_span.end()
        return outcome.run, outcome.created

    async def StartRun(
        self, request: runs_pb2.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.StartRunResponse:
        record, created = await self._start(request, context.invocation_metadata() or ())
        return runs_pb2.StartRunResponse(run=run_to_proto(record), created=created)

    async def RunWorkflow(
        self, request: runs_pb2.RunWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.RunWorkflowResponse:
        with self._stream_slot():
            return await self._run_workflow(request, context)

    async def _run_workflow(
        self, request: runs_pb2.RunWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.RunWorkflowResponse:
        # Subscribed to the new run's events before it is made: every event it will have comes
        # live, and none needs reading (a run found by its idempotency key is read instead).
        subscription: Subscription | None = None

        async def subscribe(run_id: str) -> None:
            nonlocal subscription
            subscription = await self._hub.subscribe(run_id)

        try:
            record, created = await self._start(
                request, context.invocation_metadata() or (), subscribe
            )
        except BaseException:
            if subscription is not None:
                await self._hub.end(subscription)
            raise
        if subscription is not None and (not created or record.run_id != subscription.run_id):
            await self._hub.end(subscription)
            subscription = None
        remaining = context.time_remaining()
        if record.terminal and subscription is not None:
            await self._hub.end(subscription)
        elif not record.terminal:
            wait = None
            if remaining is not None:
                margin = min(
                    _DEADLINE_MARGIN_CAP, max(_DEADLINE_MARGIN, remaining * _DEADLINE_SHARE)
                )
                wait = max(0.0, remaining - margin)
            try:
                async with asyncio.timeout(wait):
                    events = self._hub.events(
                        record.run_id,
                        record.last_event_id,
                        EventPage([], False, 0) if subscription is not None else None,
                        subscription,
                    )
                    try:
                        async for event in events:
                            if event.terminal:
                                break
                    finally:
                        await events.aclose()
            except TimeoutError:
                pass  # the caller's deadline comes first: answer with the run as it is
            finally:
                if subscription is not None:
                    await self._hub.end(subscription)  # (the events ended it, if they began)
            record = await self._store.runs.get(record.run_id, record.tenant)
        return runs_pb2.RunWorkflowResponse(run=run_to_proto(record), created=created)

    async def GetRun(
        self, request: runs_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.GetRunResponse:
        record = await self._store.runs.get(_require_run_id(request.run_id), current().tenant)
        return runs_pb2.GetRunResponse(run=run_to_proto(record))

    async def ListRuns(
        self, request: runs_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.ListRunsResponse:
        size = _page_size(request.page_size, self._settings.max_page_size)
        status = ""
        if request.status:
            name = (
                runs_pb2.RunStatus.Name(request.status)
                if request.status in runs_pb2.RunStatus.values()
                else ""
            )
            if not name:
                raise InvalidArgumentError(
                    f"status {request.status} is not a RunStatus", "INVALID_STATUS"
                )
            status = name.removeprefix("RUN_STATUS_")
        if request.view not in runs_pb2.RunView.values():
            raise InvalidArgumentError(
                f"view {request.view} is not a RunView: RUN_VIEW_BASIC (the default) or "
                "RUN_VIEW_FULL",
                "INVALID_VIEW",
            )
        before = None
        if request.HasField("created_before") and not request.page_token:
            # Rounded up: a time inside a millisecond keeps the runs of that millisecond
            # that came before it.
            ms = -(-request.created_before.ToNanoseconds() // 1_000_000)
            if not 0 < ms <= _LATEST_TIMESTAMP_MS:
                raise InvalidArgumentError(
                    "created_before must be a time after 1970 and before 10000",
                    "INVALID_CREATED_BEFORE",
                )
            before = (ms, "")  # strictly before: ties on the millisecond order by id
        if request.page_token:
            ms, run_id = _decode_token(request.page_token, 2)
            # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
            if not _CURSOR_MS.fullmatch(ms) or not 0 < len(run_id) <= 128:
                raise InvalidArgumentError(_BAD_TOKEN, "INVALID_PAGE_TOKEN")
            before = (int(ms), run_id)
        page = await self._store.runs.page(
            request.workflow,
            status,
            size,
            before,
            current().tenant,
            full=request.view == runs_pb2.RUN_VIEW_FULL,
            max_bytes=_LIST_MOST_BYTES,
        )
        return runs_pb2.ListRunsResponse(
            runs=[run_to_proto(r) for r in page.runs],
            next_page_token=_encode_token(str(page.cursor[0]), page.cursor[1])
            if page.cursor
            else "",
        )

    async def CancelRun(
        self, request: runs_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.CancelRunResponse:
        run_id = _require_run_id(request.run_id)
        reason = request.reason[:1000] or "cancelled by request"
        tenant = current().tenant
        await self._store.runs.get(run_id, tenant)  # another tenant's run is not found
        outcome = await self._store.runs.cancel(run_id, reason)
        if outcome.previous == "RUNNING" and outcome.worker_id:
            await self._store.notices.cancel(
                CancelNotice(run_id, outcome.attempt, outcome.worker_id, reason)
            )
        # Its children go with it: at once here, else (Redis away now) by the monitor, which
        # also sees to their own children.
        try:
            await cancel_children(self._store, [run_id])
        except RedisError as exc:
            log.warning("run %s: its children are left to the monitor to cancel: %s", run_id, exc)
        record = await self._store.runs.get(run_id, tenant)
        if record.parent_run_id:  # a child: its parent, if it waits for it, goes on now
            try:
                await self._store.waits.wake([record.parent_run_id])
            except RedisError as exc:
                log.warning("run %s: its parent is left to the monitor to wake: %s", run_id, exc)
        return runs_pb2.CancelRunResponse(run=run_to_proto(record))

    async def SendInput(
        self, request: runs_pb2.SendInputRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.SendInputResponse:
        run_id = _require_run_id(request.run_id)
        if not request.name:
            raise InvalidArgumentError(
                "name is required: the name the workflow passed to ctx.wait_for_input "
                "(its INPUT_REQUESTED event says it)",
                "INPUT_NAME_REQUIRED",
            )
        try:
            name = check_input_name(request.name)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc), "INVALID_INPUT_NAME") from None
        payload_json = _json_of(request, "payload_json", "payload")
        size = len(payload_json.encode())
        if size > self._settings.max_input_bytes:
            raise TooLargeError(
                f"payload_json is {size} bytes, over the limit of "
                f"{self._settings.max_input_bytes} bytes: pass a reference to large data (a URL "
                "or object key) instead",
                "INPUT_TOO_LARGE",
            )
        try:
            payload = canonical_json(payload_json)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgumentError(
                f"payload_json is not valid JSON: {exc}", "INPUT_NOT_JSON"
            ) from None
        caller = current()
        await self._store.runs.get(run_id, caller.tenant)  # another tenant's run is not found

        async def check(request_json: str) -> None:
            try:
                schema = json.loads(request_json).get("schema")
            except (ValueError, AttributeError):
                return  # a request this version cannot read: nothing to check against
            if schema is None:
                return
            # In a thread: bounded (see longline._waits), but not free on a large payload.
            error = await asyncio.to_thread(schema_error, payload, schema)
            if error is not None:
                raise InvalidArgumentError(
                    f"the payload for input {name!r} does not match the schema the run asked "
                    f"with: {error}",
                    "INPUT_DOES_NOT_MATCH_SCHEMA",
                )

        outcome = await self._store.waits.send_input(
            run_id,
            name,
            payload,
            "" if caller.kind == "anonymous" else caller.name,
            check,
        )
        record = await self._store.runs.get(run_id, caller.tenant)
        return runs_pb2.SendInputResponse(run=run_to_proto(record), duplicate=outcome.duplicate)

    async def CreateRunToken(
        self, request: runs_pb2.CreateRunTokenRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.CreateRunTokenResponse:
        run_id = _require_run_id(request.run_id)
        caller = current()
        if caller.kind != "anonymous" and not self._run_tokens.shared:
            raise FailedPreconditionError(
                "run tokens are off on this deployment: its control planes need a signing "
                "secret (LONGLINE_RUN_TOKEN_SECRET, the same on every replica, at least 32 "
                "bytes)",
                "RUN_TOKENS_OFF",
            )
        await self._store.runs.get(run_id, caller.tenant)  # another tenant's run is not found
        token, expires = self._run_tokens.mint(
            run_id, caller.tenant, caller.name, request.ttl_seconds
        )
        return runs_pb2.CreateRunTokenResponse(token=token, expire_time=_timestamp(expires * 1000))

    async def StreamRun(
        self, request: runs_pb2.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runs_pb2.StreamRunResponse]:
        stream = await self.open_stream(request)
        try:
            async for event in stream.events:
                yield runs_pb2.StreamRunResponse(event=event_to_proto(stream.run_id, event))
        finally:
            await stream.close()

    async def open_stream(self, request: runs_pb2.StreamRunRequest) -> OpenStream:
        """StreamRun's checks (the caller, the run, the cursor, the tenant's streams), made
        before any event is sent; then the events to send, as StreamRun sends them."""
        run_id = _require_run_id(request.run_id)
        if request.after_event_id:
            parse_event_id(request.after_event_id)
        # Subscribed first: the first page, read after, misses nothing, and needs no second
        # read once subscribed. NOT_FOUND before any event.
        after = request.after_event_id
        subscription = await self._hub.subscribe(run_id)
        try:
            return await self._open_subscribed(run_id, after, subscription)
        except BaseException:
            await self._hub.end(subscription)
            raise

    async def _open_subscribed(
        self, run_id: str, after: str, subscription: Subscription
    ) -> OpenStream:
        opened = await self._store.events.open(run_id, current().tenant, after)
        last = opened.last_event_id
        if (
            after
            and last
            and not opened.ended
            and event_id_key(after) > event_id_key(last)
            and event_id_key(after)[0] > await self._store.now_ms() + _CURSOR_SLACK_MS
        ):
            # Past the run's last event (read in one HMGET with the status, written in the
            # same script as every event) AND ahead of Redis's clock: every event to come has
            # a smaller id, so waiting would wait forever. A cursor past the last event but
            # not ahead of the clock is legitimate after a failover that lost the events it
            # names: the events to come have larger ids, so it waits for them.
            raise OutOfRangeError(
                f"after_event_id {after} is past the last event of run {run_id!r}, {last}: "
                "pass an event_id this run's stream sent, or its last_event_id (GetRun) to "
                "wait for what comes next, or leave it empty to start from the first event",
                "CURSOR_PAST_LAST_EVENT",
            )
        first = opened.page
        if opened.ended and not first.more and not any(e.terminal for e in first.events):
            # A finished run, and the cursor is past its terminal event: nothing will come
            # but what follows the cursor, if anything (its terminal event lost in a failover).
            await self._hub.end(subscription)
            return OpenStream(run_id, not first.events, _listed(first.events), _nothing)
        give_back = self._take_stream_slot()  # refused before any event is sent
        return OpenStream(
            run_id,
            False,
            self._live(run_id, after, first, give_back, subscription),
            give_back,
            lambda: self._hub.end(subscription),
        )

    async def _live(
        self,
        run_id: str,
        after: str,
        first: EventPage,
        give_back: Callable[[], None],
        subscription: Subscription,
    ) -> AsyncGenerator[StoredEvent, None]:
        try:
            async for event in self._hub.events(run_id, after, first, subscription):
                yield event
        finally:
            give_back()

    async def await_end(self, run_id: str, after: str, wait: float) -> runs_pb2.Run:
        """The run once it ended, or as it is after `wait` seconds (the HTTP face's
        `Prefer: wait=N`); counts as one of the tenant's streams meanwhile."""
        with self._stream_slot():
            try:
                async with asyncio.timeout(wait):
                    async for event in self._hub.events(run_id, after):
                        if event.terminal:
                            break
            except TimeoutError:
                pass  # it goes on: answered as it is
        return run_to_proto(await self._store.runs.get(run_id, current().tenant))

    async def GetRunTrace(
        self, request: runs_pb2.GetRunTraceRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.GetRunTraceResponse:
        run_id = _require_run_id(request.run_id)
        record = await self._store.runs.get(run_id, current().tenant)
        budget = _TraceBudget()
        events, truncated = await self._trace_events(run_id, budget)
        tree = _trace.build(events, run_id)
        # Child runs nest under the span that started them, breadth first, within the same
        # bounds (events, bytes, children): past them, a child is its span alone.
        at = 0
        while at < len(tree):
            span = tree[at]
            at += 1
            if span.kind != "CHILD_RUN" or not span.run_id:
                continue
            if budget.children >= _TRACE_MOST_CHILDREN or budget.exhausted:
                truncated = True
                continue
            budget.children += 1
            child_events, cut = await self._trace_events(span.run_id, budget)
            truncated = truncated or cut
            nested = _trace.nest(span, _trace.build(child_events, span.run_id))
            tree[at:at] = nested
        # The reply is bounded too (clients accept 4 MiB by default): spans past the budget
        # are left out, and the trace says it is truncated.
        spans = []
        reply_bytes = 0
        for span_msg in map(span_to_proto, tree):
            reply_bytes += span_msg.ByteSize()
            if reply_bytes > _TRACE_REPLY_BYTES:
                truncated = True
                break
            spans.append(span_msg)
        # Tokens over the whole tree: what its child runs spent, the run spent.
        live = [s for s in spans if s.status != runs_pb2.TRACE_SPAN_STATUS_REPLAYED]
        run = run_to_proto(record)
        run.input_json = run.result_json = ""  # GetRun has them; a trace is about spans
        return runs_pb2.GetRunTraceResponse(
            run=run,
            spans=spans,
            input_tokens=sum(s.input_tokens for s in live),
            output_tokens=sum(s.output_tokens for s in live),
            truncated=truncated,
        )

    async def _trace_events(
        self, run_id: str, budget: _TraceBudget
    ) -> tuple[list[StoredEvent], bool]:
        """A run's events from its first, within what is left of the budget; and whether
        some were left out."""
        events: list[StoredEvent] = []
        truncated = False
        while not budget.exhausted:
            page = await self._store.events.read_page(
                run_id,
                events[-1].event_id if events else "",
                min(PAGE_EVENTS, _TRACE_MOST_EVENTS - budget.events),
                min(PAGE_BYTES, _TRACE_MOST_BYTES - budget.bytes),
            )
            events += page.events
            budget.events += len(page.events)
            budget.bytes += page.bytes
            if not page.more:
                return events, False
        if events:  # whether anything follows: one event at most
            after = await self._store.events.read_page(run_id, events[-1].event_id, 1, 1)
            truncated = bool(after.events)
        else:
            truncated = True
        return events, truncated

    async def ListWorkflows(
        self, request: runs_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> runs_pb2.ListWorkflowsResponse:
        size = _page_size(request.page_size, self._settings.max_page_size)
        after = _decode_token(request.page_token, 1)[0] if request.page_token else ""
        rows = [w for w in await self._store.presence.workflows() if w.name > after]
        page = rows[:size]
        return runs_pb2.ListWorkflowsResponse(
            workflows=[
                runs_pb2.Workflow(
                    name=w.name, description=w.description, workers=w.workers, builds=w.builds
                )
                for w in page
            ],
            next_page_token=_encode_token(page[-1].name) if len(rows) > size else "",
        )
