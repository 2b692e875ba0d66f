"""ScheduleService, and the scheduler every replica runs: cron schedules that start runs.

A tick is a time the schedule's cron expression names, in its time zone. Each replica's
scheduler sleeps until the earliest schedule is due, then makes one pass over each due
schedule (`_pass`): the ticks that came since its last one are run, skipped or buffered by
its overlap policy, or counted as missed when older than its catch-up window; then the pass
is applied over the very version of the schedule it read (ADVANCE_SCHEDULE). Two replicas
passing over one schedule at once compute the same ticks, and a run is made for a tick with
the tick as its idempotency key (`schedule:ID:TICK_MS`), so whichever replica makes it,
and whether or not the replica before it died mid-tick, a tick has one run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from croniter import CroniterBadDateError, CroniterError, croniter

from longline._store import (
    Backoff,
    InvalidArgumentError,
    NotFoundError,
    RateLimitedError,
    RedisError,
    ResponseError,
    ScheduleRecord,
    Store,
    TenantLimits,
    Tick,
    TooLargeError,
    transient,
)
from longline.v1 import schedules_pb2, schedules_pb2_grpc

from ._auth import current
from ._runs import run_to_proto
from ._settings import ControlPlaneSettings

log = logging.getLogger("longline.control_plane.schedules")

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
DEFAULT_CATCHUP_MS = 3_600_000  # an hour
MAX_CATCHUP_MS = 366 * 86_400_000
# A tick is missed, not late, once it is older than the catch-up window plus this: the
# scheduler's own lag (a busy replica, a Redis blip) is not an outage.
SLACK_MS = 10_000
MOST_TICKS_A_PASS = 100  # ticks one pass runs; more are due at once after it
MOST_MISSED_COUNTED = 10_000  # missed ticks counted one by one; past that, jumped over
BUFFER_LOOK_MS = 500  # how often a buffered tick looks whether the run before it ended
MOST_NAP = 0.5  # seconds the scheduler sleeps at most (a new schedule is seen within it)
MAX_CRON = 256  # characters of a cron expression, at most (a long one costs every replica)
MAX_ZONE = 64  # characters of a time zone name
_POLICIES = {
    schedules_pb2.OVERLAP_POLICY_SKIP: "SKIP",
    schedules_pb2.OVERLAP_POLICY_BUFFER_ONE: "BUFFER_ONE",
    schedules_pb2.OVERLAP_POLICY_ALLOW_ALL: "ALLOW_ALL",
}
_OVERLAP_VALUES = {name: value for value, name in _POLICIES.items()}


@dataclass(frozen=True)
class Cron:
    """A cron expression read in a time zone."""

    expression: str
    zone: ZoneInfo

    @classmethod
    def parse(cls, expression: str, time_zone: str) -> Cron:
        """The cron, or InvalidArgumentError saying what is wrong."""
        if len(expression) > MAX_CRON or len(time_zone) > MAX_ZONE:
            raise InvalidArgumentError(
                f"cron is at most {MAX_CRON} characters and time_zone at most {MAX_ZONE}",
                "INVALID_CRON" if len(expression) > MAX_CRON else "UNKNOWN_TIME_ZONE",
            )
        expression = " ".join(expression.split())
        if not expression:
            raise InvalidArgumentError(
                "cron is required, e.g. '0 8 * * *' (08:00 every day) or '*/10 * * * * *' "
                "(every 10 seconds: six fields, seconds first)",
                "CRON_REQUIRED",
            )
        try:
            zone = ZoneInfo(time_zone or "UTC")
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidArgumentError(
                f"time zone {time_zone[:100]!r} is not known: use an IANA name such as "
                "'Europe/Berlin' or 'America/New_York', or leave it empty for UTC",
                "UNKNOWN_TIME_ZONE",
            ) from None
        cron = cls(expression, zone)
        fields = expression.split()
        if not expression.startswith("@") and len(fields) not in (5, 6):
            raise InvalidArgumentError(
                f"cron {expression[:100]!r} has {len(fields)} fields: use five (minute hour "
                "day month weekday) or six with seconds first",
                "INVALID_CRON",
            )
        try:
            if cron.next_after(int(time.time() * 1000)) is None:
                raise CroniterBadDateError("it never fires")
        except (CroniterError, ValueError, KeyError) as exc:
            raise InvalidArgumentError(
                f"cron {expression[:100]!r} is not valid: {str(exc)[:300]}", "INVALID_CRON"
            ) from None
        return cron

    @property
    def fixed_hour(self) -> bool:
        """Whether it ticks at set hours (no '*' in its hour field, as a daily job), which
        run once when clocks repeat an hour; ticks every hour or more often run on."""
        if self.expression.startswith("@"):
            return self.expression != "@hourly"
        fields = self.expression.split()
        hour = fields[2] if len(fields) == 6 else fields[1]
        return "*" not in hour

    def next_after(self, ms: int) -> int | None:
        """The first tick after `ms` (Unix ms), or None when there is none."""
        start = datetime.fromtimestamp(ms / 1000, self.zone)
        seconds = not self.expression.startswith("@") and len(self.expression.split()) == 6
        try:
            it = croniter(self.expression, start, second_at_beginning=seconds)
            nxt = it.get_next(datetime)
            # When clocks go back, a wall time comes twice: a tick of a job at set hours runs
            # once (as cron does), not again in the repeated hour. Hourly and more often run on.
            if (
                self.fixed_hour
                and nxt.replace(tzinfo=None) == start.replace(tzinfo=None)
                and nxt.timestamp() != start.timestamp()  # (same-zone == ignores the fold)
            ):
                nxt = it.get_next(datetime)
        except CroniterBadDateError:
            return None
        return int(nxt.timestamp() * 1000)


def _timestamp_ms(ms: int) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def schedule_to_proto(r: ScheduleRecord) -> schedules_pb2.Schedule:
    """The wire form of a schedule."""
    spec = r.spec
    msg = schedules_pb2.Schedule(
        schedule_id=r.schedule_id,
        spec=schedules_pb2.ScheduleSpec(
            cron=str(spec.get("cron", "")),
            time_zone=str(spec.get("time_zone", "")),
            workflow=str(spec.get("workflow", "")),
            input_json=str(spec.get("input_json", "")),
            labels=dict(spec.get("labels") or {}),
            overlap_policy=_OVERLAP_VALUES.get(
                str(spec.get("overlap", "SKIP")), schedules_pb2.OVERLAP_POLICY_UNSPECIFIED
            ),
        ),
        paused=r.paused,
        note=r.note,
        last_run_id=r.last_run_id,
        started_runs=r.started,
        skipped_ticks=r.skipped,
        missed_ticks=r.missed,
        last_error=r.last_error,
    )
    msg.spec.catchup_window.FromMilliseconds(int(spec.get("catchup_ms", DEFAULT_CATCHUP_MS)))
    for name, ms in (
        ("next_tick_time", 0 if r.paused else r.next_ms),
        ("last_tick_time", r.last_tick_ms),
        ("buffered_tick_time", r.buffered_ms),
        ("create_time", r.create_ms),
        ("update_time", r.update_ms),
    ):
        if ms:
            getattr(msg, name).CopyFrom(_timestamp_ms(ms))
    return msg


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _check_id(schedule_id: str) -> str:
    if not schedule_id:
        raise InvalidArgumentError(
            "schedule_id is required: a name of your choosing", "SCHEDULE_ID_REQUIRED"
        )
    if not _ID.fullmatch(schedule_id):
        raise InvalidArgumentError(
            f"schedule_id {schedule_id[:140]!r} is not valid: 1 to 128 letters, digits, '_', "
            "'.' or '-', starting with a letter or digit",
            "INVALID_SCHEDULE_ID",
        )
    return schedule_id


class ScheduleServicer(schedules_pb2_grpc.ScheduleServiceServicer):
    """The ScheduleService RPCs, on the caller's tenant's schedules."""

    def __init__(self, store: Store, settings: ControlPlaneSettings) -> None:
        self._store = store
        self._settings = settings

    async def _spec(self, spec: schedules_pb2.ScheduleSpec) -> tuple[dict[str, Any], Cron]:
        """The spec as stored, checked; and its cron."""
        cron = Cron.parse(spec.cron, spec.time_zone)
        if not spec.workflow:
            raise InvalidArgumentError(
                "workflow is required: the workflow each tick runs", "WORKFLOW_REQUIRED"
            )
        if not await self._store.presence.known(spec.workflow):
            raise NotFoundError(
                f"workflow {spec.workflow[:100]!r} is not known: no worker has announced it",
                "WORKFLOW_NOT_FOUND",
            )
        size = len(spec.input_json.encode())
        if size > self._settings.max_input_bytes:
            raise TooLargeError(
                f"input_json is {size} bytes, over the limit of "
                f"{self._settings.max_input_bytes} bytes",
                "INPUT_TOO_LARGE",
            )
        try:
            json.loads(spec.input_json or "null", parse_constant=_not_json)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgumentError(
                f"input_json is not valid JSON: {exc}", "INPUT_NOT_JSON"
            ) from None
        most, label_bytes = self._settings.max_labels, self._settings.max_label_bytes
        if len(spec.labels) > most - 3 or any(
            not k or len(k.encode()) > label_bytes or len(v.encode()) > label_bytes
            for k, v in spec.labels.items()
        ):
            raise InvalidArgumentError(
                f"at most {most - 3} labels (longline.schedule, longline.tick and "
                "longline.trigger are longline's), "
                f"keys non-empty, keys and values at most {label_bytes} bytes",
                "INVALID_LABELS",
            )
        if spec.overlap_policy not in (0, *_POLICIES):
            raise InvalidArgumentError(
                f"overlap_policy {spec.overlap_policy} is not an OverlapPolicy: use "
                "OVERLAP_POLICY_SKIP, OVERLAP_POLICY_BUFFER_ONE or OVERLAP_POLICY_ALLOW_ALL",
                "INVALID_OVERLAP_POLICY",
            )
        catchup = DEFAULT_CATCHUP_MS
        if spec.HasField("catchup_window"):
            catchup = spec.catchup_window.ToMilliseconds()
            if not 0 <= catchup <= MAX_CATCHUP_MS:
                raise InvalidArgumentError(
                    "catchup_window must be between 0 and 366 days", "INVALID_CATCHUP_WINDOW"
                )
        stored = {
            "cron": cron.expression,
            "time_zone": spec.time_zone,
            "workflow": spec.workflow,
            "input_json": spec.input_json,
            "labels": dict(spec.labels),
            "overlap": _POLICIES.get(spec.overlap_policy, "SKIP"),
            "catchup_ms": catchup,
        }
        return stored, cron

    async def _first_tick(self, cron: Cron) -> int | None:
        return cron.next_after(await self._store.now_ms())

    async def CreateSchedule(
        self, request: schedules_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.CreateScheduleResponse:
        schedule_id = _check_id(request.schedule_id)
        spec, cron = await self._spec(request.spec)
        record = await self._store.schedules.create(
            current().tenant, schedule_id, spec, await self._first_tick(cron), request.paused
        )
        log.info("schedule %s created: %s %s", schedule_id, spec["cron"], spec["workflow"])
        return schedules_pb2.CreateScheduleResponse(schedule=schedule_to_proto(record))

    async def GetSchedule(
        self, request: schedules_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.GetScheduleResponse:
        record = await self._store.schedules.get(current().tenant, _check_id(request.schedule_id))
        return schedules_pb2.GetScheduleResponse(schedule=schedule_to_proto(record))

    async def ListSchedules(
        self, request: schedules_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.ListSchedulesResponse:
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative", "INVALID_PAGE_SIZE")
        size = min(request.page_size or 50, 500)
        after = request.page_token
        if after:
            _check_id(after)
        found, more = await self._store.schedules.page(current().tenant, size, after)
        return schedules_pb2.ListSchedulesResponse(
            schedules=[schedule_to_proto(r) for r in found], next_page_token=more
        )

    async def UpdateSchedule(
        self, request: schedules_pb2.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.UpdateScheduleResponse:
        schedule_id = _check_id(request.schedule_id)
        await self._store.schedules.get(current().tenant, schedule_id)  # NOT_FOUND first
        spec, cron = await self._spec(request.spec)
        record = await self._store.schedules.update(
            current().tenant, schedule_id, spec, await self._first_tick(cron)
        )
        return schedules_pb2.UpdateScheduleResponse(schedule=schedule_to_proto(record))

    async def PauseSchedule(
        self, request: schedules_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.PauseScheduleResponse:
        record = await self._store.schedules.pause(
            current().tenant, _check_id(request.schedule_id), request.note[:1000]
        )
        return schedules_pb2.PauseScheduleResponse(schedule=schedule_to_proto(record))

    async def ResumeSchedule(
        self, request: schedules_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.ResumeScheduleResponse:
        tenant, schedule_id = current().tenant, _check_id(request.schedule_id)
        record = await self._store.schedules.get(tenant, schedule_id)
        if not record.paused:  # nothing to resume: its pending ticks stay as they are
            return schedules_pb2.ResumeScheduleResponse(schedule=schedule_to_proto(record))
        cron = Cron.parse(str(record.spec.get("cron", "")), str(record.spec.get("time_zone", "")))
        record = await self._store.schedules.resume(
            tenant, schedule_id, await self._first_tick(cron)
        )
        return schedules_pb2.ResumeScheduleResponse(schedule=schedule_to_proto(record))

    async def TriggerSchedule(
        self, request: schedules_pb2.TriggerScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.TriggerScheduleResponse:
        tenant, schedule_id = current().tenant, _check_id(request.schedule_id)
        record = await self._store.schedules.get(tenant, schedule_id)
        now = await self._store.now_ms()
        created = await start_tick(
            self._store,
            self._settings,
            record,
            now,
            manual=True,
            limits=tenant_limits(self._settings),
        )
        return schedules_pb2.TriggerScheduleResponse(
            run=run_to_proto(created), schedule=schedule_to_proto(record)
        )

    async def DeleteSchedule(
        self, request: schedules_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.DeleteScheduleResponse:
        await self._store.schedules.delete(current().tenant, _check_id(request.schedule_id))
        return schedules_pb2.DeleteScheduleResponse()


def tick_key(schedule_id: str, tick_ms: int) -> str:
    """The idempotency key of a tick's run: one run per tick, whoever makes it."""
    return f"schedule:{schedule_id}:{tick_ms}"


async def start_tick(
    store: Store,
    settings: ControlPlaneSettings,
    record: ScheduleRecord,
    tick_ms: int,
    *,
    manual: bool = False,
    limits: TenantLimits | None = None,
) -> Any:
    """Start the run of a tick (or, `manual`, of a TriggerSchedule: a run of its own), under
    the tenant's `limits` (a tenant's limits hold for its schedules' runs as for its
    StartRuns)."""
    spec = record.spec
    labels = dict(spec.get("labels") or {})
    labels["longline.schedule"] = record.schedule_id
    labels["longline.tick"] = datetime.fromtimestamp(tick_ms / 1000, UTC).isoformat(
        timespec="milliseconds"
    )
    key = "" if manual else tick_key(record.schedule_id, tick_ms)
    if manual:
        labels["longline.trigger"] = "manual"
    created = await store.runs.create(
        store.runs.new_run_id(key, record.tenant),
        str(spec["workflow"]),
        str(spec.get("input_json") or "null"),
        labels,
        key,
        tenant=record.tenant,
        limits=limits,
        retention_ms=int(settings.retention * 1000),
    )
    return created.run


def tenant_limits(settings: ControlPlaneSettings) -> TenantLimits:
    """A tenant's limits on starting runs, as the settings say."""
    return TenantLimits(
        max_queued=settings.max_queued_per_tenant,
        start_rate=settings.start_rate_per_tenant,
        start_burst=settings.start_burst_per_tenant,
    )


class _Refused(Exception):
    """A tick's run could not be made: its workflow was never announced, or the tenant is
    over a limit (the schedule's last_error says which)."""


class Scheduler:
    """Starts the runs of due schedules' ticks; every replica runs one."""

    def __init__(self, store: Store, settings: ControlPlaneSettings) -> None:
        self._store = store
        self._settings = settings
        self.started = 0  # runs this replica's passes started
        self._limits = tenant_limits(settings)

    async def run(self) -> None:
        """The scheduler loop; runs until cancelled. Survives every Redis error with
        backoff; a schedule it cannot read is put off a minute and logged."""
        backoff = Backoff()
        while True:
            try:
                now = await self._store.now_ms()
                for tenant, schedule_id in await self._store.schedules.due(now):
                    try:
                        await self._pass(tenant, schedule_id, now)
                    except RedisError as exc:
                        if transient(exc) or not isinstance(exc, ResponseError):
                            raise  # Redis itself: backed off below
                        # A reply about this schedule (a key of another type): said, put off.
                        log.error(
                            "schedule %s of tenant %r: %s; put off a minute",
                            schedule_id,
                            tenant,
                            exc,
                        )
                        await self._store.schedules.put_off(tenant, schedule_id, now + 60_000)
                    except Exception:  # a bug here must not end every replica's scheduler
                        log.exception(
                            "schedule %s of tenant %r: put off a minute", schedule_id, tenant
                        )
                        await self._store.schedules.put_off(tenant, schedule_id, now + 60_000)
                first = await self._store.schedules.next_due_ms()
                now = await self._store.now_ms()
            except Exception as exc:  # Redis away (or a cluster client's own error): backoff
                await backoff.wait(log, "scheduler", exc)
                continue
            backoff.reset()
            nap = MOST_NAP if first is None else (first - now) / 1000 + 0.001
            await asyncio.sleep(min(max(nap, 0.001), MOST_NAP))

    async def _pass(self, tenant: str, schedule_id: str, now: int) -> None:
        record = None
        try:
            record = await self._store.schedules.get(tenant, schedule_id)
            if record.paused:  # its due entry outlived a pause (written by hand?): dropped
                await self._store.schedules.forget(tenant, schedule_id)
                return
            tick = await self._ticks(record, now)
        except NotFoundError:
            await self._store.schedules.forget(tenant, schedule_id)
            return
        except RedisError:
            raise
        except Exception as exc:  # a record this version cannot read: said, not looped on
            log.error(
                "schedule %s of tenant %r: %s: %s; trying again in a minute",
                schedule_id,
                tenant,
                type(exc).__name__,
                exc,
            )
            if record is None:  # not even its hash could be read
                await self._store.schedules.put_off(tenant, schedule_id, now + 60_000)
                return
            tick = Tick(
                next_ms=record.next_ms or None,
                buffered_ms=record.buffered_ms or None,
                last_error=f"{type(exc).__name__}: {exc}",
                look_again_ms=now + 60_000,
            )
        if await self._store.schedules.advance(record, tick):
            self.started += tick.started

    async def _ticks(self, record: ScheduleRecord, now: int) -> Tick:
        spec = record.spec
        cron = Cron.parse(str(spec.get("cron", "")), str(spec.get("time_zone", "")))
        policy = str(spec.get("overlap", "SKIP"))
        cutoff = now - int(spec.get("catchup_ms", DEFAULT_CATCHUP_MS)) - SLACK_MS
        # The ticks since the last pass: missed ones counted, the rest to handle in order.
        due: list[int] = []
        missed = 0
        t: int | None = record.next_ms or None
        while t is not None and t <= now and len(due) < MOST_TICKS_A_PASS:
            if t < cutoff:
                missed += 1
                if missed >= MOST_MISSED_COUNTED:  # jump to the window's start
                    t = cron.next_after(cutoff - 1)
                    continue
            else:
                due.append(t)
            t = cron.next_after(t)
        last_run = record.last_run_id
        running = bool(last_run) and not await self._ended(last_run)
        buffered = record.buffered_ms or None
        started = skipped = 0
        error = record.last_error
        last_tick: int | None = None

        async def start(tick_ms: int) -> None:
            nonlocal last_run, running, started, error
            try:
                run = await start_tick(
                    self._store, self._settings, record, tick_ms, limits=self._limits
                )
            except (NotFoundError, RateLimitedError) as exc:  # not announced; over a limit
                error = exc.message
                raise _Refused() from exc
            last_run, running, error = run.run_id, not run.terminal, ""
            started += 1

        if buffered is not None and not running:
            try:
                await start(buffered)
            except _Refused:
                skipped += 1
            buffered = None
        for tick_ms in due:
            last_tick = tick_ms
            made = await self._store.runs.by_idempotency_key(
                tick_key(record.schedule_id, tick_ms), record.tenant
            )
            try:
                if made is not None or policy == "ALLOW_ALL" or not running:
                    await start(tick_ms)  # a run made already is found, not made again
                elif policy == "BUFFER_ONE" and buffered is None:
                    buffered = tick_ms
                else:
                    skipped += 1
            except _Refused:
                skipped += 1
        return Tick(
            last_tick_ms=last_tick,
            last_run_id=last_run if last_run != record.last_run_id else "",
            started=started,
            skipped=skipped,
            missed=missed,
            next_ms=t,
            buffered_ms=buffered,
            last_error=error,
            look_again_ms=min(t, now + BUFFER_LOOK_MS)
            if buffered and t
            else (now + BUFFER_LOOK_MS if buffered else None),
        )

    async def _ended(self, run_id: str) -> bool:
        status = await self._store.runs.status(run_id)
        return status is None or status in ("SUCCEEDED", "FAILED", "CANCELLED")
