"""Runs as their hashes hold them: creating, reading, listing and cancelling runs.

Owns `keys.run_key(run_id)` (a hash: the run's state; the attempt scripts change it too, as
they move a run through its life), the run indexes (`keys.runs_key`,
`keys.runs_by_workflow_key`), idempotency keys (`keys.idempotency_key`), the tenants' rate
buckets (`keys.start_rate_key`) and the counters (`keys.STATS_STATUS`,
`keys.STATS_QUEUED`, `keys.STATS_TENANTS`, `keys.STATS_BUILDS`), which every script keeps
exact. `keys.RUNS_INDEX` is the index of the tenant-less runs. CREATE_RUN and CANCEL_RUN
are its scripts (`_scripts`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .._events import TERMINAL_STATUSES
from . import _keys as keys
from . import _scripts
from ._errors import FailedPreconditionError, NotFoundError, RateLimitedError
from ._presence import Presence

__all__ = [
    "STATS",
    "CancelOutcome",
    "Created",
    "RunPage",
    "RunRecord",
    "Runs",
    "Stats",
    "TenantLimits",
]

# The counters every transition keeps exact; every script takes them as its last four KEYS.
STATS = (keys.STATS_TENANTS, keys.STATS_BUILDS, keys.STATS_STATUS, keys.STATS_QUEUED)
_MIN_SCAN = 1000  # index entries one ListRuns request may read, at least


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


@dataclass(frozen=True)
class CancelOutcome:
    """What CANCEL_RUN did: `previous` status; `worker_id` holds the task to stop."""

    previous: str
    attempt: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class Created:
    """What starting a run did: the run, and whether this call created it (False: an
    earlier run with the same idempotency key)."""

    run: RunRecord
    created: bool


@dataclass(frozen=True, slots=True)
class RunPage:
    """Runs newest first, and the cursor (create_ms, run_id) to read on from (None: the
    last page)."""

    runs: list[RunRecord]
    cursor: tuple[int, str] | None


@dataclass(frozen=True, slots=True)
class Stats:
    """Runs by status, and queued runs by workflow, kept exact by the scripts."""

    by_status: dict[str, int]
    queued: dict[str, int]


class _CreateAnswer(enum.IntEnum):
    """CREATE_RUN's first reply element."""

    CREATED = 1
    EXISTING = 0  # an earlier run with this idempotency key
    TOO_MANY_QUEUED = -1
    RATE_EXCEEDED = -2
    UNKNOWN_WORKFLOW = -3


class _CancelAnswer(enum.IntEnum):
    """CANCEL_RUN's first reply element."""

    CANCELLED = 1
    ALREADY_ENDED = 0
    NOT_FOUND = -1


class Runs:
    """Runs in their hashes and indexes."""

    def __init__(self, redis: aioredis.Redis, presence: Presence) -> None:
        self._redis = redis
        self._presence = presence
        self._create = redis.register_script(_scripts.CREATE_RUN)
        self._cancel = redis.register_script(_scripts.CANCEL_RUN)

    async def create(
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
    ) -> Created:
        """Queue a new run of `tenant`, or find the earlier run on an idempotency key match.
        Raises NotFoundError for a workflow no worker announced, RateLimitedError over the
        tenant's limits."""
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
                *STATS,
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
        answer = _CreateAnswer(int(reply[0]))
        if answer is _CreateAnswer.UNKNOWN_WORKFLOW:
            known = [w.name for w in await self._presence.workflows()]
            raise NotFoundError(
                f"workflow {workflow[:100]!r} is not known: no worker has announced it. "
                f"Known workflows: {', '.join(known) or 'none (is a worker running?)'}",
                "WORKFLOW_NOT_FOUND",
            )
        value = reply[1]
        if answer is _CreateAnswer.TOO_MANY_QUEUED:
            raise RateLimitedError(
                f"{value} runs of this tenant are queued, its limit: wait for some to start "
                "(more workers drain the queue faster), or ask the operator to raise "
                "--max-queued-per-tenant",
                "TOO_MANY_QUEUED_RUNS",
                retry_after=1.0,
            )
        if answer is _CreateAnswer.RATE_EXCEEDED:
            wait = int(value) / 1000
            raise RateLimitedError(
                f"this tenant starts runs faster than its limit of {limits.start_rate:g} per "
                f"second (bursts of {limits.start_burst}): retry in {wait:.3f} s",
                "START_RATE_EXCEEDED",
                retry_after=wait,
            )
        if answer is _CreateAnswer.CREATED:
            flat = reply[2]
            return Created(RunRecord.decode(dict(zip(flat[::2], flat[1::2], strict=True))), True)
        return Created(await self.get(str(value), tenant), False)

    async def stats(self) -> Stats:
        """Runs by status and queued runs by workflow, kept exact by the scripts."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.STATS_STATUS)
            pipe.hgetall(keys.STATS_QUEUED)
            by_status, queued = await pipe.execute()
        return Stats(
            {k: int(v) for k, v in by_status.items()},
            {k: int(v) for k, v in queued.items()},
        )

    async def get(self, run_id: str, tenant: str | None = None) -> RunRecord:
        """The run's state; NotFoundError when there is no such run, or when it belongs to
        another tenant than `tenant` (None: any), which is told apart from nothing."""
        h = await self._redis.hgetall(keys.run_key(run_id))
        if not h or (tenant is not None and h.get("tenant", "") != tenant):
            raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")
        return RunRecord.decode(h)

    async def get_many(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Several runs in one round trip; missing runs are left out."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(keys.run_key(run_id))
            hashes = await pipe.execute()
        return [RunRecord.decode(h) for h in hashes if h]

    async def page(
        self,
        workflow: str,
        status: str,
        page_size: int,
        before: tuple[int, str] | None,
        tenant: str = "",
        *,
        full: bool = False,
        max_bytes: int = 0,
    ) -> RunPage:
        """The tenant's runs newest first, after the cursor (create_ms, run_id), with the
        cursor to read on from.

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
            batch = await self._redis.zrevrangebyscore(
                index, max_score, "-inf", start=offset, num=batch_size, withscores=True
            )
            offset += len(batch)
            # Ties on the millisecond are ordered by id, as the cursor tuple is.
            candidates = [
                run_id for run_id, score in batch if before is None or (int(score), run_id) < before
            ]
            # The small fields, and how large input and result are, before reading them.
            async with self._redis.pipeline(transaction=False) as pipe:
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
                    return await self._filled(found, full, max_bytes)
                found.append(record)
                sizes.append(size)
            if len(batch) < batch_size or offset >= max_scan:
                page = (await self._filled(found, full, max_bytes)).runs
                if len(page) < len(found):  # cut short by what was written meanwhile
                    return RunPage(page, (page[-1].create_ms, page[-1].run_id))
                if len(batch) < batch_size:
                    return RunPage(page, None)
                last_id, last_score = batch[-1]
                return RunPage(page, (int(last_score), str(last_id)))

    async def _filled(self, runs: list[RunRecord], full: bool, max_bytes: int) -> RunPage:
        """The page with input and result filled in when `full`, and its cursor. A result
        written after its size was read can make the page larger than measured: it is then
        cut again to `max_bytes`."""
        if full and runs:
            async with self._redis.pipeline(transaction=False) as pipe:
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
        return RunPage(runs, (last.create_ms, last.run_id) if last else None)

    async def cancel(self, run_id: str, reason: str) -> CancelOutcome:
        """Cancel a queued or running run, writing RUN_CANCELLED once."""
        reply = await self._cancel(
            keys=[
                keys.run_key(run_id),
                keys.events_key(run_id),
                keys.LEASES,
                keys.steps_key(run_id),
                *STATS,
            ],
            args=[reason],
        )
        answer = _CancelAnswer(int(reply[0]))
        if answer is _CancelAnswer.NOT_FOUND:
            raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")
        if answer is _CancelAnswer.ALREADY_ENDED:
            raise FailedPreconditionError(
                f"run {run_id!r} already ended {reply[1]}; only a QUEUED or RUNNING run can be "
                "cancelled",
                "RUN_ALREADY_ENDED",
            )
        return CancelOutcome(previous=str(reply[1]), attempt=int(reply[2]), worker_id=str(reply[3]))

    async def status(self, run_id: str) -> str | None:
        """The run's status, or None when it does not exist (any more)."""
        status = await self._redis.hget(keys.run_key(run_id), "status")
        return None if status is None else str(status)

    async def workflow_of(self, run_id: str) -> str | None:
        """The run's workflow, or None when it does not exist (any more)."""
        workflow = await self._redis.hget(keys.run_key(run_id), "workflow")
        return None if workflow is None else str(workflow)

    async def workflows_of(self, run_ids: Sequence[str]) -> list[str | None]:
        """The workflows of several runs in one round trip (None: gone)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(keys.run_key(run_id), "workflow")
            return list(await pipe.execute())
