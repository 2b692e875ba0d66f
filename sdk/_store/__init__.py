"""The Redis schema both planes share: keys, Lua scripts, the event encoding.

The planes never import each other; they meet over gRPC, Redis and this module.
Everything that must be atomic is one Lua script in `_scripts`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .._errors import LeaseLost
from . import _keys as keys
from . import _reads, _scripts, _sentinel
from ._builds import WHEN_UNSERVED, BuildView, check_build_id, check_workflow_name, load_view
from ._errors import (
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    RateLimitedError,
    TooLargeError,
)
from ._loops import Backoff, transient
from ._reads import PAGE_BYTES, PAGE_EVENTS
from ._sentinel import check_redis_url

__all__ = [
    "PAGE_BYTES",
    "PAGE_EVENTS",
    "NOT_HELD",
    "STARTED",
    "TAKEN_BACK",
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "BuildStats",
    "BuildView",
    "CancelOutcome",
    "DomainError",
    "EventPage",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "OpenedStream",
    "OutOfRangeError",
    "RunRecord",
    "RateLimitedError",
    "RunWriter",
    "Store",
    "StoredEvent",
    "TenantLimits",
    "TooLargeError",
    "WorkflowBuilds",
    "check_build_id",
    "check_workflow_name",
    "check_redis_url",
    "connect",
    "encode_event",
    "event_id_key",
    "keys",
    "parse_event_id",
    "presence_ms",
]

log = logging.getLogger("longline.store")
_STATS = (keys.STATS_TENANTS, keys.STATS_BUILDS, keys.STATS_STATUS, keys.STATS_QUEUED)

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
TERMINAL_EVENTS = frozenset({"RUN_SUCCEEDED", "RUN_FAILED", "RUN_CANCELLED"})
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # fullmatch: ASCII only, no newline


# Python 3.11's asyncio.timeout can swallow a task's cancellation while redis-py waits for a
# reply inside it, leaving the task hung for good (a StreamRun whose client left, a run being
# cancelled mid-write). 3.12 fixed it. On 3.11 we therefore read without a socket timeout and
# find dead connections with TCP keepalive instead.
_TIMEOUTS_ARE_CANCEL_SAFE = sys.version_info >= (3, 12)
_KEEPALIVE = {
    opt: value
    for opt, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 10),
        (getattr(socket, "TCP_KEEPINTVL", None), 5),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if opt is not None
}


def connect(
    url: str, *, max_connections: int = 0, socket_timeout: float | None = 10.0, **kwargs: Any
) -> aioredis.Redis:
    """A client for `url` that answers str, the way every longline process talks to Redis.

    `url` is redis://, rediss:// or unix:// as redis-py reads them, or
    redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE_NAME[/DB] for a
    primary found through Sentinel, followed across failovers (see `_sentinel`). A
    malformed URL is a ValueError; check_redis_url says what to fix in any of them.
    With max_connections, callers wait for a free connection instead of opening more:
    the number of Redis connections of a process stays bounded whatever its load.
    A blocking reader must pass a socket_timeout longer than its BLOCK.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "protocol": 2,  # reply shapes must not depend on what the server offers
        "socket_timeout": socket_timeout if _TIMEOUTS_ARE_CANCEL_SAFE else None,
        "socket_connect_timeout": 10.0 if _TIMEOUTS_ARE_CANCEL_SAFE else None,
        "socket_keepalive": True,
        "socket_keepalive_options": _KEEPALIVE,
        **kwargs,
    }
    if url.startswith(_sentinel.SCHEME + ":"):
        parsed = _sentinel.parse_sentinel_url(url)
        return _sentinel.sentinel_client(parsed, max_connections=max_connections, options=options)
    if max_connections:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, **options
        )
        return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    return aioredis.Redis.from_url(url, **options)


def parse_event_id(event_id: str) -> tuple[int, int]:
    """The (milliseconds, sequence) of an event id; InvalidArgumentError when malformed."""
    match = _EVENT_ID.fullmatch(event_id)
    if not match:
        raise InvalidArgumentError(
            f"after_event_id {event_id[:60]!r} is not an event id: expected the "
            "'<milliseconds>-<sequence>' form of an event_id this server sent, e.g. "
            "'1732630000000-0', or empty to start from the first event",
            "INVALID_EVENT_ID",
        )
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > _MAX_ID_PART or seq > _MAX_ID_PART:
        raise InvalidArgumentError(
            f"after_event_id {event_id[:60]!r} is out of range: both parts of an event id "
            f"are at most {_MAX_ID_PART}",
            "INVALID_EVENT_ID",
        )
    return ms, seq


_MAX_ID_PART = 2**64 - 1


def _range_start(after: str) -> str | None:
    """XRANGE's start for the events after `after`; None when no id can follow it."""
    if not after:
        return "-"
    if event_id_key(after) == (_MAX_ID_PART, _MAX_ID_PART):
        return None
    return f"({after}"


def event_id_key(event_id: str) -> tuple[int, int]:
    """Sort key of a well-formed event id (ids compare by time, then sequence)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as stored in a run's stream."""

    event_id: str
    type: str  # the EventType name without its prefix, e.g. "STATUS"
    attempt: int
    message: str = ""
    data_json: str = ""
    component: str = ""
    span_id: str = ""
    parent_span_id: str = ""

    @property
    def time_ms(self) -> int:
        """When Redis stored the event (the id's millisecond part)."""
        return event_id_key(self.event_id)[0]

    @property
    def terminal(self) -> bool:
        """Whether this is the run's one terminal event."""
        return self.type in TERMINAL_EVENTS

    @classmethod
    def decode(cls, event_id: str, fields: dict[str, str]) -> StoredEvent:
        """From a stream entry."""
        return cls(
            event_id=event_id,
            type=fields.get("t", "UNSPECIFIED"),
            attempt=int(fields.get("a", "0")),
            message=fields.get("m", ""),
            data_json=fields.get("d", ""),
            component=fields.get("c", ""),
            span_id=fields.get("s", ""),
            parent_span_id=fields.get("p", ""),
        )


def encode_event(
    type: str,
    attempt: int,
    message: str = "",
    data_json: str = "",
    component: str = "",
    span_id: str = "",
    parent_span_id: str = "",
) -> list[str]:
    """The flat field list of a stream entry; empty fields are left out."""
    out = ["t", type, "a", str(attempt)]
    for name, value in (
        ("m", message),
        ("d", data_json),
        ("c", component),
        ("s", span_id),
        ("p", parent_span_id),
    ):
        if value:
            out += [name, value]
    return out


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events of one run in id order: at most a count, and at most a byte budget of ids, field
    names and values unless it is a single event."""

    events: list[StoredEvent]
    more: bool  # a limit ended the page: read on after its last event
    bytes: int


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """The start of a StreamRun: its first page and what the run's hash says."""

    page: EventPage
    ended: bool  # the run is in a terminal status
    last_event_id: str  # its newest event when the page was read ('' if it has none)


def _entries_page(entries: list[tuple[str, dict[str, str]]], count: int) -> EventPage:
    size = sum(len(i) + sum(len(k) + len(v) for k, v in f.items()) for i, f in entries)
    events = [StoredEvent.decode(i, f) for i, f in entries]
    return EventPage(events, more=len(events) == count, bytes=size)


def _script_page(reply: Any) -> EventPage:
    more, size, entries = reply
    events = [StoredEvent.decode(i, dict(zip(f[::2], f[1::2], strict=True))) for i, f in entries]
    return EventPage(events, more=bool(int(more)), bytes=int(size))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The state of one run as stored in its hash."""

    run_id: str
    workflow: str
    status: str
    attempt: int
    input_json: str
    result_json: str
    error_type: str
    error_message: str
    error_component: str
    create_ms: int
    update_ms: int
    last_event_id: str
    worker_id: str
    labels: dict[str, str] = field(default_factory=dict)
    tenant: str = ""

    @property
    def terminal(self) -> bool:
        """Whether the run has ended."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def decode(cls, h: dict[str, str]) -> RunRecord:
        """From the run's hash."""
        return cls(
            run_id=h["run_id"],
            workflow=h.get("workflow", ""),
            status=h.get("status", "UNSPECIFIED"),
            attempt=int(h.get("attempt") or 0),
            input_json=h.get("input_json", ""),
            result_json=h.get("result_json", ""),
            error_type=h.get("error_type", ""),
            error_message=h.get("error_message", ""),
            error_component=h.get("error_component", ""),
            create_ms=int(h.get("create_ms") or 0),
            update_ms=int(h.get("update_ms") or 0),
            last_event_id=h.get("last_event_id", ""),
            worker_id=h.get("worker_id", ""),
            labels=json.loads(h.get("labels_json") or "{}"),
            tenant=h.get("tenant", ""),
        )


# The run hash fields ListRuns shows, but input_json and result_json (RunRecord.decode).
_LIST_FIELDS = (
    "run_id",
    "workflow",
    "status",
    "attempt",
    "error_type",
    "error_message",
    "error_component",
    "create_ms",
    "update_ms",
    "last_event_id",
    "worker_id",
    "labels_json",
    "tenant",
)


def _record_bytes(r: RunRecord) -> int:
    return (
        len(r.run_id)
        + len(r.workflow)
        + len(r.input_json)
        + len(r.result_json)
        + len(r.error_type)
        + len(r.error_message)
        + len(r.error_component)
        + len(r.last_event_id)
        + sum(len(k) + len(v) for k, v in r.labels.items())
    )


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's limits on starting runs (0 = no limit)."""

    max_queued: int = 0
    start_rate: float = 0.0  # StartRun per second, sustained
    start_burst: int = 0


@dataclass(frozen=True, slots=True)
class BuildStats:
    """One build of one workflow: its live workers and its runs."""

    build: str
    workers: int
    queued: int
    running: int
    unserved: int
    current: bool


@dataclass(frozen=True)
class WorkflowBuilds:
    """One workflow's current build, move policy and builds."""

    workflow: str
    current: str
    policy: str
    builds: list[BuildStats]

    @property
    def unserved(self) -> int:
        """Queued runs no worker will take as things stand."""
        return sum(b.unserved for b in self.builds)


@dataclass(frozen=True)
class CancelOutcome:
    """What CANCEL_RUN did: `previous` status; `worker_id` holds the task to stop."""

    previous: str
    attempt: int
    worker_id: str


def _claimed(reply: Any) -> tuple[str, str, str] | str | None:
    if reply and int(reply[0]) == -1:
        return str(reply[1])
    if not reply or int(reply[0]) != 1:
        return None
    return str(reply[1]), str(reply[2]), str(reply[3])


_MIN_SCAN = 1000  # index entries one ListRuns request may read, at least
# What Store.take_back did.
TAKEN_BACK, STARTED, NOT_HELD = "taken back", "started", "not held"


def holder(attempt: int, worker_id: str) -> str:
    """How a fenced write names who it comes from: the attempt, on that very worker."""
    return f"{attempt}@{worker_id}"


def presence_ms(heartbeat_interval: float) -> int:
    """How long a worker counts as live after its last heartbeat: five heartbeats, so that a
    worker slowed down by a busy machine is not taken for gone."""
    return int(heartbeat_interval * 5000)


class Store:
    """Run state, queues, events and presence in Redis, for both planes."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._create = redis.register_script(_scripts.CREATE_RUN)
        self._claim = redis.register_script(_scripts.CLAIM_RUN)
        self._cancel = redis.register_script(_scripts.CANCEL_RUN)
        self._requeue = redis.register_script(_scripts.REQUEUE_RUN)
        self._append = redis.register_script(_scripts.APPEND_EVENTS)
        self._finish = redis.register_script(_scripts.FINISH_RUN)
        self._heartbeat = redis.register_script(_scripts.HEARTBEAT)
        self._expire = redis.register_script(_scripts.EXPIRE_LEASE)
        self._read_page = redis.register_script(_reads.READ_PAGE)
        self._memory_usage = True  # False once Redis refused MEMORY USAGE: measure every page

    # -- runs -------------------------------------------------------------

    async def create_run(
        self,
        run_id: str,
        workflow: str,
        input_json: str,
        labels: dict[str, str],
        idempotency_key: str = "",
        traceparent: str = "",
        tenant: str = "",
        limits: TenantLimits | None = None,
        retention_ms: int = 0,
    ) -> tuple[bool, RunRecord]:
        """Queue a new run of `tenant`; (created, the run), the earlier run on an idempotency
        key match. Raises NotFoundError for a workflow no worker announced, RateLimitedError
        over the tenant's limits."""
        idem = (
            keys.idempotency_key(idempotency_key, tenant)
            if idempotency_key
            else keys.run_key(run_id)
        )
        limits = limits or TenantLimits()
        reply = await self._create(
            keys=[
                keys.run_key(run_id),
                keys.events_key(run_id),
                idem,
                keys.runs_key(tenant),
                keys.runs_by_workflow_key(workflow, tenant),
                keys.queue_key(workflow),
                keys.start_rate_key(tenant),
                keys.WORKFLOWS,
                *_STATS,
            ],
            args=[
                run_id,
                workflow,
                input_json,
                json.dumps(labels, sort_keys=True),
                idempotency_key,
                traceparent,
                tenant,
                limits.max_queued,
                limits.start_rate,
                limits.start_burst,
                retention_ms,
            ],
        )
        outcome = int(reply[0])
        if outcome == -3:
            known = [name for name, _, _ in await self.list_workflows()]
            raise NotFoundError(
                f"workflow {workflow[:100]!r} is not known: no worker has announced it. "
                f"Known workflows: {', '.join(known) or 'none (is a worker running?)'}",
                "WORKFLOW_NOT_FOUND",
            )
        value = reply[1]
        if outcome == -1:
            raise RateLimitedError(
                f"{value} runs of this tenant are queued, its limit: wait for some to start "
                "(more workers drain the queue faster), or ask the operator to raise "
                "--max-queued-per-tenant",
                "TOO_MANY_QUEUED_RUNS",
                retry_after=1.0,
            )
        if outcome == -2:
            wait = int(value) / 1000
            raise RateLimitedError(
                f"this tenant starts runs faster than its limit of {limits.start_rate:g} per "
                f"second (bursts of {limits.start_burst}): retry in {wait:.3f} s",
                "START_RATE_EXCEEDED",
                retry_after=wait,
            )
        if outcome == 1:
            flat = reply[2]
            return True, RunRecord.decode(dict(zip(flat[::2], flat[1::2], strict=True)))
        return False, await self.get_run(str(value), tenant)

    async def stats(self) -> tuple[dict[str, int], dict[str, int]]:
        """(runs by status, queued runs by workflow), kept exact by the scripts."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.STATS_STATUS)
            pipe.hgetall(keys.STATS_QUEUED)
            by_status, queued = await pipe.execute()
        return (
            {k: int(v) for k, v in by_status.items()},
            {k: int(v) for k, v in queued.items()},
        )

    async def get_run(self, run_id: str, tenant: str | None = None) -> RunRecord:
        """The run's state; NotFoundError when there is no such run, or when it belongs to
        another tenant than `tenant` (None: any), which is told apart from nothing."""
        h = await self.redis.hgetall(keys.run_key(run_id))
        if not h or (tenant is not None and h.get("tenant", "") != tenant):
            raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")
        return RunRecord.decode(h)

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Several runs in one round trip; missing runs are left out."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(keys.run_key(run_id))
            hashes = await pipe.execute()
        return [RunRecord.decode(h) for h in hashes if h]

    async def list_runs(
        self,
        workflow: str,
        status: str,
        page_size: int,
        before: tuple[int, str] | None,
        tenant: str = "",
        *,
        full: bool = False,
        max_bytes: int = 0,
    ) -> tuple[list[RunRecord], tuple[int, str] | None]:
        """The tenant's runs newest first, after the cursor (create_ms, run_id); returns the
        next cursor.

        Without `full`, a run's input_json and result_json are neither read nor returned.
        With `max_bytes`, the page ends early (with a cursor) before the run whose fields
        would take it over that many bytes; it always holds one run when there is one.
        """
        index = keys.runs_by_workflow_key(workflow, tenant) if workflow else keys.runs_key(tenant)
        max_score = "+inf" if before is None else str(before[0])
        found: list[RunRecord] = []
        sizes: list[int] = []
        offset = 0
        batch_size = page_size + 1
        # A filter that matches few runs would read the whole index for one page: a request
        # reads at most max_scan index entries, and a page that ends there (even an empty one)
        # carries the cursor of the last entry read.
        max_scan = max(_MIN_SCAN, 20 * page_size)
        while True:
            batch = await self.redis.zrevrangebyscore(
                index, max_score, "-inf", start=offset, num=batch_size, withscores=True
            )
            offset += len(batch)
            # Ties on the millisecond are ordered by id, as the cursor tuple is.
            candidates = [
                run_id for run_id, score in batch if before is None or (int(score), run_id) < before
            ]
            # The small fields, and how large input and result are, before reading them.
            async with self.redis.pipeline(transaction=False) as pipe:
                for run_id in candidates:
                    pipe.hmget(keys.run_key(run_id), *_LIST_FIELDS)
                    if full:
                        pipe.hstrlen(keys.run_key(run_id), "input_json")
                        pipe.hstrlen(keys.run_key(run_id), "result_json")
                replies = await pipe.execute() if candidates else []
            step = 3 if full else 1
            for n in range(len(candidates)):
                values = replies[n * step]
                if values[0] is None:
                    continue  # gone meanwhile (its retention ran out)
                h = {k: v for k, v in zip(_LIST_FIELDS, values, strict=True) if v is not None}
                record = RunRecord.decode(h)
                if status and record.status != status:
                    continue
                size = sum(len(v) for v in h.values())
                if full:
                    size += int(replies[n * step + 1]) + int(replies[n * step + 2])
                over = bool(max_bytes and found and sum(sizes) + size > max_bytes)
                if len(found) == page_size or over:
                    return await self._page_of_runs(found, full, max_bytes)
                found.append(record)
                sizes.append(size)
            if len(batch) < batch_size or offset >= max_scan:
                page, _ = await self._page_of_runs(found, full, max_bytes)
                if len(page) < len(found):  # cut short by what was written meanwhile
                    return page, (page[-1].create_ms, page[-1].run_id)
                if len(batch) < batch_size:
                    return page, None
                last_id, last_score = batch[-1]
                return page, (int(last_score), str(last_id))

    async def _page_of_runs(
        self, runs: list[RunRecord], full: bool, max_bytes: int
    ) -> tuple[list[RunRecord], tuple[int, str] | None]:
        """The page with input and result filled in when `full`, and its cursor. A result
        written after its size was read can make the page larger than measured: it is then
        cut again to `max_bytes`."""
        if full and runs:
            async with self.redis.pipeline(transaction=False) as pipe:
                for r in runs:
                    pipe.hmget(keys.run_key(r.run_id), "input_json", "result_json")
                data = await pipe.execute()
            runs = [
                dataclasses.replace(r, input_json=i or "", result_json=o or "")
                for r, (i, o) in zip(runs, data, strict=True)
            ]
            if max_bytes:
                kept: list[RunRecord] = []
                used = 0
                for r in runs:
                    size = _record_bytes(r)
                    if kept and used + size > max_bytes:
                        break
                    kept.append(r)
                    used += size
                runs = kept
        last = runs[-1] if runs else None
        return runs, (last.create_ms, last.run_id) if last else None

    async def claim(
        self,
        run_id: str,
        attempt: int,
        worker_id: str,
        replica_id: str,
        lease_ms: int,
        max_attempts: int,
        build: str = "",
    ) -> tuple[str, str, str] | str | None:
        """Make `attempt` of a queued run RUNNING on a worker of `build`, pinning the run to it.

        Returns (workflow, input, traceparent); None when the attempt is not there to take
        (cancelled, or taken); or the current build's id when the run has not started yet and
        `build` is not the current one.
        """
        claims = [(run_id, attempt, worker_id, replica_id, lease_ms, max_attempts, build)]
        answer = (await self.claim_many(claims))[0]
        if isinstance(answer, RedisError):
            raise answer
        return answer

    async def claim_many(
        self, claims: Sequence[tuple[str, int, str, str, int, int, str]]
    ) -> list[tuple[str, str, str] | str | None | RedisError]:
        """Several claims (run_id, attempt, worker_id, replica_id, lease_ms, max_attempts,
        build) in one round trip; each answer as claim() gives it."""
        if not claims:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, attempt, worker_id, replica_id, lease_ms, max_attempts, build in claims:
                await self._claim(
                    keys=[
                        keys.run_key(run_id),
                        keys.LEASES,
                        keys.events_key(run_id),
                        keys.BUILDS_CURRENT,
                        *_STATS,
                    ],
                    args=[attempt, worker_id, replica_id, lease_ms, max_attempts, build],
                    client=pipe,
                )
            # One refused claim (OOM near the memory limit) must not hide the others that
            # landed: each answer stands alone, an error as the exception itself.
            replies = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, RedisError) else _claimed(r) for r in replies]

    async def cancel(self, run_id: str, reason: str) -> CancelOutcome:
        """Cancel a queued or running run, writing RUN_CANCELLED once."""
        reply = await self._cancel(
            keys=[
                keys.run_key(run_id),
                keys.events_key(run_id),
                keys.LEASES,
                keys.steps_key(run_id),
                *_STATS,
            ],
            args=[reason],
        )
        outcome = int(reply[0])
        if outcome == -1:
            raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")
        if outcome == 0:
            raise FailedPreconditionError(
                f"run {run_id!r} already ended {reply[1]}; only a QUEUED or RUNNING run can be "
                "cancelled",
                "RUN_ALREADY_ENDED",
            )
        return CancelOutcome(previous=str(reply[1]), attempt=int(reply[2]), worker_id=str(reply[3]))

    async def requeue(
        self,
        run_id: str,
        workflow: str,
        attempt: int,
        reason: str,
        worker_id: str,
        *,
        stopped: bool = False,
    ) -> bool:
        """Put an attempt `worker_id` holds back in the queue as the next attempt; False if
        that worker does not hold it. `stopped`: the worker stopped it because it could not
        renew its lease (free three times per run, then a lost attempt; see REQUEUE_RUN)."""
        done = await self._requeue(
            keys=self._requeue_keys(run_id, workflow),
            args=[holder(attempt, worker_id), reason, "stopped" if stopped else ""],
        )
        return int(done) == 1

    @staticmethod
    def _requeue_keys(run_id: str, workflow: str) -> list[str]:
        return [
            keys.run_key(run_id),
            keys.events_key(run_id),
            keys.queue_key(workflow),
            keys.LEASES,
            keys.steps_key(run_id),
            *_STATS,
        ]

    async def take_back(
        self, run_id: str, workflow: str, attempt: int, reason: str, worker_id: str
    ) -> str:
        """Requeue an assignment `worker_id` never acknowledged, unless it has written for
        the run already (then it has it: STARTED). TAKEN_BACK, STARTED, or NOT_HELD."""
        done = await self._requeue(
            keys=self._requeue_keys(run_id, workflow),
            args=[holder(attempt, worker_id), reason, "untouched"],
        )
        return {1: TAKEN_BACK, 2: STARTED, 3: TAKEN_BACK}.get(int(done), NOT_HELD)

    async def expire_leases(self, lease_timeout: float, limit: int = 100) -> list[tuple[str, str]]:
        """Requeue (or fail) the runs whose lease ran out; [(run_id, 'requeued'|'failed')]."""
        now = await self._now_ms()
        due = await self.redis.zrangebyscore(keys.LEASES, "-inf", now, start=0, num=limit)
        if not due:
            return []
        workflows = await self._workflows_of(due)
        acted = []
        for run_id, workflow in zip(due, workflows, strict=True):
            outcome = await self._expire(
                keys=[
                    keys.run_key(run_id),
                    keys.events_key(run_id),
                    keys.queue_key(workflow or ""),
                    keys.LEASES,
                    keys.steps_key(run_id),
                    *_STATS,
                ],
                args=[run_id, f"{lease_timeout:g}"],
            )
            if outcome:
                acted.append((run_id, str(outcome)))
        return acted

    async def next_lease_expiry_ms(self) -> int | None:
        """When the earliest lease runs out (Redis time, ms), or None with no leases."""
        first = await self.redis.zrange(keys.LEASES, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def _workflows_of(self, run_ids: Sequence[str]) -> list[str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(keys.run_key(run_id), "workflow")
            return list(await pipe.execute())

    async def run_status(self, run_id: str) -> str | None:
        """The run's status, or None when it does not exist (any more)."""
        status = await self.redis.hget(keys.run_key(run_id), "status")
        return None if status is None else str(status)

    async def held_by(
        self, worker_id: str, attempts: Sequence[tuple[str, int]], workflows: set[str]
    ) -> dict[str, int]:
        """Of the (run_id, attempt) pairs a worker says it runs, those Redis agrees with: the
        attempt holds the run, on that worker, for one of `workflows`."""
        if not attempts:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, _ in attempts:
                pipe.hmget(keys.run_key(run_id), "status", "attempt", "worker_id", "workflow")
            replies = await pipe.execute()
        return {
            run_id: attempt
            for (run_id, attempt), (status, held, worker, workflow) in zip(
                attempts, replies, strict=True
            )
            if status == "RUNNING"
            and held == str(attempt)
            and worker == worker_id
            and workflow in workflows
        }

    async def load_checkpoints(self, run_id: str) -> dict[str, str]:
        """The run's finished steps: step key -> JSON result."""
        return dict(await self.redis.hgetall(keys.steps_key(run_id)))

    # -- events -----------------------------------------------------------

    async def open_events(
        self,
        run_id: str,
        tenant: str,
        after: str,
        count: int = _reads.PAGE_EVENTS,
        max_bytes: int = _reads.PAGE_BYTES,
    ) -> OpenedStream:
        """The run's first page of events after the cursor (see read_page), whether it has
        ended and its newest event's id, read after the check that the run exists and is
        `tenant`'s (NotFoundError otherwise)."""
        start = _range_start(after)
        key = keys.events_key(run_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.run_key(run_id), "run_id", "tenant", "status", "last_event_id")
            if self._memory_usage:
                pipe.memory_usage(key, samples=0)
            fields, *usage = await pipe.execute(raise_on_error=False)
        if isinstance(fields, Exception):
            raise fields
        found, owner, status, last = fields
        if found is None or (owner or "") != tenant:
            raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")
        page = EventPage([], False, 0)
        if start is not None:
            page = await self._page(key, start, count, max_bytes, self._usage(usage))
        return OpenedStream(page, status in TERMINAL_STATUSES, last or "")

    async def read_page(
        self,
        run_id: str,
        after: str,
        count: int = _reads.PAGE_EVENTS,
        max_bytes: int = _reads.PAGE_BYTES,
    ) -> EventPage:
        """Up to `count` events after the cursor ('' = from the first) and up to `max_bytes`
        of their ids, field names and values, but always one event when there is one."""
        start = _range_start(after)
        if start is None:
            return EventPage([], False, 0)
        key = keys.events_key(run_id)
        usage: int | None = None
        if self._memory_usage:
            try:
                usage = await self.redis.memory_usage(key, samples=0) or 0
            except ResponseError as exc:
                usage = self._usage([exc])
        return await self._page(key, start, count, max_bytes, usage)

    async def read_events(
        self, run_id: str, after: str, count: int, max_bytes: int = _reads.PAGE_BYTES
    ) -> list[StoredEvent]:
        """The events of read_page: fewer than `count` does not mean there are no more."""
        return (await self.read_page(run_id, after, count, max_bytes)).events

    def _usage(self, reply: list[Any]) -> int | None:
        """The stream's size from a MEMORY USAGE reply; None when it is not known."""
        if not reply:
            return None
        if isinstance(reply[0], ResponseError):  # not allowed here (an ACL, a managed Redis)
            log.info("MEMORY USAGE refused (%s): every page of events is measured", reply[0])
            self._memory_usage = False
            return None
        if isinstance(reply[0], Exception):
            raise reply[0]
        return int(reply[0] or 0)

    async def _page(
        self, key: str, start: str, count: int, max_bytes: int, usage: int | None
    ) -> EventPage:
        count = max(1, count)
        if usage is not None and usage + count * _reads.ENTRY_MARGIN <= max_bytes:
            return _entries_page(await self.redis.xrange(key, start, "+", count=count), count)
        return _script_page(await self._read_page(keys=[key], args=[start, count, max_bytes]))

    # -- workflows and workers ---------------------------------------------

    async def announce(
        self,
        worker_id: str,
        workflows: Iterable[tuple[str, str]],
        ttl_ms: int,
        build: str = "",
        draining: bool = False,
    ) -> None:
        """Record the workflows (name, description) and the worker's presence for ttl_ms.

        A draining worker stays present but no longer counts as a worker of its build that
        takes runs, so runs pinned to that build can move on (see _builds).
        """
        workflows = list(workflows)
        if not workflows:
            return
        now = await self._now_ms()
        member = f"{build}\t{worker_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.WORKFLOWS, mapping=dict(workflows))
            for name, _ in workflows:
                pipe.zadd(keys.workflow_workers_key(name), {worker_id: now + ttl_ms})
                # Workers gone for an hour are forgotten (their presence ran out long ago).
                pipe.zremrangebyscore(keys.workflow_workers_key(name), "-inf", now - 3_600_000)
                pipe.sadd(keys.builds_key(name), build)
                if draining:
                    pipe.zrem(keys.build_workers_key(name), member)
                else:
                    pipe.zadd(keys.build_workers_key(name), {member: now + ttl_ms})
                pipe.zremrangebyscore(keys.build_workers_key(name), "-inf", now - 3_600_000)
            await pipe.execute()

    async def withdraw(self, worker_id: str, workflows: Iterable[str], build: str = "") -> None:
        """Remove a worker's presence (it stopped)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in workflows:
                pipe.zrem(keys.workflow_workers_key(name), worker_id)
                pipe.zrem(keys.build_workers_key(name), f"{build}\t{worker_id}")
            await pipe.execute()

    # -- builds (blue-green) ------------------------------------------------

    async def build_view(self, workflows: Iterable[str]) -> BuildView:
        """The routing state of `workflows` (current builds, policies, live builds)."""
        return await load_view(self.redis, sorted(set(workflows)))

    async def promote(self, workflow: str, build: str, policy: str, force: bool) -> str:
        """Make `build` the current build of `workflow`; returns the previous one ('')."""
        check_build_id(build, allow_empty=False)
        if not await self.workflow_known(workflow):
            raise NotFoundError(
                f"workflow {workflow[:100]!r} is not known: no worker has announced it",
                "WORKFLOW_NOT_FOUND",
            )
        view = await self.build_view([workflow])
        if not force and build not in view.live.get(workflow, set()):
            raise FailedPreconditionError(
                f"no live worker of build {build!r} serves workflow {workflow!r}, so new runs "
                "would wait: start its workers first (longline worker --build-id "
                f"{build}), or promote with force",
                "BUILD_HAS_NO_WORKERS",
            )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys.BUILDS_CURRENT, workflow)
            pipe.hset(keys.BUILDS_CURRENT, workflow, build)
            pipe.sadd(keys.builds_key(workflow), build)
            if policy:
                pipe.hset(keys.BUILDS_POLICY, workflow, policy)
            previous = (await pipe.execute())[0]
        return previous or ""

    async def list_builds(self, workflow: str = "") -> list[WorkflowBuilds]:
        """Every workflow's builds with their workers and queued and running runs."""
        names = [workflow] if workflow else sorted(await self.redis.hkeys(keys.WORKFLOWS))
        if workflow and not await self.workflow_known(workflow):
            raise NotFoundError(
                f"workflow {workflow[:100]!r} is not known: no worker has announced it",
                "WORKFLOW_NOT_FOUND",
            )
        view = await self.build_view(names)
        counts: dict[tuple[str, str, str], int] = {}
        for field_name, value in (await self.redis.hgetall(keys.STATS_BUILDS)).items():
            parts = field_name.split("\t")
            if len(parts) == 3:  # names cannot hold tabs; anything else is not ours
                counts[parts[0], parts[1], parts[2]] = int(value)
        now = await self._now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebyscore(keys.build_workers_key(name), now, "+inf")
            members = await pipe.execute()
        result = []
        for name, live_members in zip(names, members, strict=True):
            workers: dict[str, int] = {}
            for member in live_members:
                build = member.partition("\t")[0]
                workers[build] = workers.get(build, 0) + 1
            current = view.current.get(name, "")
            builds = view.builds.get(name, set()) | {b for (w, b, _) in counts if w == name}
            statuses = []
            for build in sorted(builds):
                queued = counts.get((name, build, "QUEUED"), 0)
                running = counts.get((name, build, "RUNNING"), 0)
                if not (queued or running or workers.get(build) or build == current):
                    continue  # a build of the past: nothing left of it
                statuses.append(
                    BuildStats(
                        build=build,
                        workers=workers.get(build, 0),
                        queued=queued,
                        running=running,
                        unserved=0 if view.served(name, build) else queued,
                        current=build == current,
                    )
                )
            result.append(
                WorkflowBuilds(
                    workflow=name,
                    current=current,
                    policy=view.policy.get(name, WHEN_UNSERVED),
                    builds=statuses,
                )
            )
        return result

    async def workflow_known(self, workflow: str) -> bool:
        """Whether any worker ever announced the workflow."""
        return bool(await self.redis.hexists(keys.WORKFLOWS, workflow))

    async def list_workflows(self) -> list[tuple[str, str, int]]:
        """(name, description, live workers) of every announced workflow, by name."""
        known = await self.redis.hgetall(keys.WORKFLOWS)
        names = sorted(known)
        now = await self._now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(keys.workflow_workers_key(name), now, "+inf")
            counts = await pipe.execute()
        return [(n, known[n], int(c)) for n, c in zip(names, counts, strict=True)]

    async def heartbeat(
        self, attempts: Sequence[tuple[str, int]], lease_ms: int, worker_id: str
    ) -> list[bool]:
        """Extend the leases of (run_id, attempt) pairs `worker_id` holds, in one round trip;
        False = lost."""
        if not attempts:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, attempt in attempts:
                await self._heartbeat(
                    keys=[keys.run_key(run_id), keys.LEASES],
                    args=[holder(attempt, worker_id), lease_ms],
                    client=pipe,
                )
            replies = await pipe.execute()
        return [bool(r) for r in replies]

    async def _now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000


class RunWriter:
    """A worker's fenced writes for one attempt of one run.

    Every write is refused inside Redis once the attempt no longer holds the run;
    the writer then raises LeaseLost. Writes are sent one at a time, in order, each
    with the next sequence number, and retried with backoff while Redis is away or
    refuses writes for a while (a failover, a server loading its data; see
    _loops.transient): a retried write whose first try did land is not applied twice.
    Retries stop, with LeaseLost, once `alive()` says the worker can no longer count on
    its lease (not renewed for a lease timeout): the run has been moved on by then.
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        attempt: int,
        worker_id: str,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self.run_id = run_id
        self.attempt = attempt
        self._holder = holder(attempt, worker_id)
        self._alive = alive
        self._seq = 0
        self._lock = asyncio.Lock()
        self._keys = [keys.run_key(run_id), keys.events_key(run_id)]

    async def _send(self, call: Callable[[int], Awaitable[Any]]) -> Any:
        async with self._lock:
            self._seq += 1
            backoff = Backoff(first=0.05, cap=2.0)
            while True:
                if not self._alive():
                    raise LeaseLost(self.run_id, self.attempt)
                try:
                    return await call(self._seq)
                except RedisError as exc:
                    if str(exc).startswith("EVENTTYPE"):  # the scripts refused what was sent
                        raise ValueError(str(exc).removeprefix("EVENTTYPE ")) from None
                    if not transient(exc):
                        raise
                    await backoff.wait(log, f"run {self.run_id}: write {self._seq}", exc)

    async def append(
        self, events: Sequence[list[str]], checkpoint: tuple[str, str] | None = None
    ) -> list[str]:
        """Append encoded events (see encode_event), and store a step checkpoint with them."""
        step, value = checkpoint or ("", "")

        async def call(seq: int) -> Any:
            args: list[Any] = [self._holder, seq, step, value, len(events)]
            for fields in events:
                args.append(len(fields))
                args.extend(fields)
            return await self._store._append(
                keys=[*self._keys, keys.steps_key(self.run_id)], args=args
            )

        ids = await self._send(call)
        if ids is None:
            raise LeaseLost(self.run_id, self.attempt)
        return [str(i) for i in ids] or [""] * len(events)

    async def finish(
        self,
        status: str,
        *,
        result_json: str = "",
        error: tuple[str, str, str] = ("", "", ""),
        event: list[str],
    ) -> str:
        """Write the terminal state and event at once; error is (type, message, component)."""

        async def call(seq: int) -> Any:
            return await self._store._finish(
                keys=[*self._keys, keys.LEASES, keys.steps_key(self.run_id), *_STATS],
                args=[self._holder, seq, status, result_json, *error, *event],
            )

        event_id = await self._send(call)
        if event_id is None:
            raise LeaseLost(self.run_id, self.attempt)
        return str(event_id)
