"""Runs as their hashes hold them: creating, reading, listing and cancelling runs.

Owns `keys.run_key(run_id)` (a hash: the run's state; the attempt scripts change it too, as
they move a run through its life), the run indexes (`keys.runs_key`,
`keys.runs_by_workflow_key`), idempotency keys (`keys.idempotency_key`), the tenants' rate
buckets (`keys.start_rate_key`) and each partition's counters (`keys.stats_keys`), which
every script keeps exact and readers sum over the partitions. CREATE_RUN, TAKE_START_TOKEN
and CANCEL_RUN are its scripts (`_scripts`).

A run is made in one partition (`new_run_id`); what spans partitions is read from all of
them: ListRuns merges the partitions' indexes in order (`page`), counters are summed
(`stats`), and a tenant's queued runs are summed before its limit is checked (`create`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .._events import TERMINAL_STATUSES
from . import _keys as keys
from . import _scripts
from ._connection import scripts_together
from ._errors import FailedPreconditionError, NotFoundError, RateLimitedError
from ._presence import Presence

__all__ = [
    "CancelOutcome",
    "Created",
    "RunPage",
    "Route",
    "RunRecord",
    "Runs",
    "Stats",
    "TenantLimits",
]

_MIN_SCAN = 1000  # index entries one ListRuns request may read, at least
_KNOWN_FOR = 10.0  # seconds a replica trusts that a workflow was announced before asking again
# Seconds a replica trusts its sum of a tenant's queued runs (read every time once within 10%
# of the limit): a burst may pass the limit by what it starts meanwhile, bounded by the
# tenant's start rate.
_QUEUED_FOR = 0.5


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
    # While WAITING: what for ("sleep", "input" or "child"), the input's name, and when its
    # timer wakes it (ms, Redis time; 0 for no timer).
    wait_kind: str = ""
    wait_name: str = ""
    wake_ms: int = 0
    wait_children: tuple[str, ...] = ()  # while WAITING for child runs: which
    parent_run_id: str = ""  # the run that started this one as its child

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
            wait_kind=h.get("wait_kind", "") if h.get("status") == "WAITING" else "",
            wait_name=h.get("wait_name", "") if h.get("status") == "WAITING" else "",
            wake_ms=int(h.get("wake_ms") or 0) if h.get("status") == "WAITING" else 0,
            wait_children=tuple((h.get("wait_children") or "").split())
            if h.get("status") == "WAITING"
            else (),
            parent_run_id=h.get("parent_run_id", ""),
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
    "wait_kind",
    "wait_name",
    "wake_ms",
    "wait_children",
    "parent_run_id",
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


@dataclass(frozen=True, slots=True)
class Route:
    """What a script that moves a run must know before it runs, to declare the run's keys:
    its workflow and build (its queue), its idempotency key ('' = none) and its parent run
    ('' = none: see keys.family_keys)."""

    workflow: str
    build: str
    idem_key: str
    parent: str = ""


class _CreateAnswer(enum.IntEnum):
    """CREATE_RUN's first reply element."""

    CREATED = 1
    EXISTING = 0  # an earlier run with this idempotency key


@dataclass
class _Cursor:
    """One partition's index, read newest first in batches, as ListRuns merges them. Each
    batch starts where the last one ended, by score (`high`, and how many entries of that
    score were read already), not by offset: runs created or removed meanwhile above it
    shift nothing."""

    index: str
    high: str  # the highest score left to read: "+inf", or a create time in ms
    skip: int = 0  # entries of score `high` read already
    buffer: list[tuple[int, str]] = field(default_factory=list)  # (score, run_id), oldest first
    done: bool = False


class _CancelAnswer(enum.IntEnum):
    """CANCEL_RUN's first reply element."""

    CANCELLED = 1
    ALREADY_ENDED = 0
    NOT_FOUND = -1


class Runs:
    """Runs in their hashes and indexes."""

    def __init__(
        self, redis: aioredis.Redis, presence: Presence, partitions: tuple[int, ...]
    ) -> None:
        self._redis = redis
        self._presence = presence
        self.partitions = partitions  # the deployment's partition numbers
        self._create = redis.register_script(_scripts.CREATE_RUN)
        self._take_token = redis.register_script(_scripts.TAKE_START_TOKEN)
        self._cancel = redis.register_script(_scripts.CANCEL_RUN)
        self._known: dict[str, float] = {}  # workflow -> until when it counts as announced
        self._queued: dict[str, tuple[float, int]] = {}  # tenant -> (trusted until, queued)

    def new_run_id(self, idempotency_key: str = "", tenant: str = "") -> str:
        """A new run's id, in its partition: the idempotency key's, or one at random."""
        random_hex = uuid.uuid4().hex
        if idempotency_key:
            n = keys.partition_for_key(idempotency_key, tenant, self.partitions)
        else:
            n = self.partitions[int(random_hex[:8], 16) % len(self.partitions)]
        return keys.run_id_in(n, random_hex)

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
        n = keys.partition_of(run_id)
        if idempotency_key:
            if n != keys.partition_for_key(idempotency_key, tenant, self.partitions):
                raise ValueError(f"run id {run_id!r} is not in its idempotency key's partition")
            idem = keys.idempotency_key(n, idempotency_key, tenant)
        else:
            idem = keys.run_key(run_id)
        limits = limits or TenantLimits()
        # What lives in other slots is read first, in one round trip: an earlier run on the
        # idempotency key (it wins over every limit, so that a retry of a StartRun that
        # landed always finds its run), whether a worker ever announced the workflow, a
        # token of the tenant's start rate, and its queued runs summed over the partitions
        # (read again at most every _QUEUED_FOR seconds, or every time near its limit).
        now = time.monotonic()
        ask_known = self._known.get(workflow, 0.0) <= now
        seen = self._queued.get(tenant)
        ask_queued = bool(limits.max_queued) and (
            seen is None or seen[0] <= now or seen[1] >= limits.max_queued * 0.9
        )
        rate = limits.start_rate > 0
        if ask_known or idempotency_key or rate or ask_queued:
            async with self._redis.pipeline(transaction=False) as pipe:
                if ask_known:
                    pipe.hexists(keys.WORKFLOWS, workflow)
                if idempotency_key:
                    pipe.get(idem)
                for p in self.partitions if ask_queued else ():
                    pipe.hget(keys.stats_keys(p)[0], tenant)
                token = [
                    (
                        self._take_token,
                        [keys.start_rate_key(tenant)],
                        [limits.start_rate, limits.start_burst],
                    )
                ]
                # The token's script beside the reads (a cluster pipelines no script).
                replies, taken = await asyncio.gather(
                    pipe.execute(), scripts_together(self._redis, token if rate else [])
                )
            replies = list(replies)
            announced = replies.pop(0) if ask_known else True
            earlier = replies.pop(0) if idempotency_key else None
            wait_ms = int(taken[0]) if rate else 0
            if ask_queued:
                seen = (now + _QUEUED_FOR, sum(int(q or 0) for q in replies))
                self._queued[tenant] = seen
            if earlier:
                return Created(await self.get(str(earlier), tenant), False)
            if not announced:
                known_names = await self._presence.names()
                raise NotFoundError(
                    f"workflow {workflow[:100]!r} is not known: no worker has announced it. "
                    f"Known workflows: {', '.join(known_names) or 'none (is a worker running?)'}",
                    "WORKFLOW_NOT_FOUND",
                )
            self._known[workflow] = now + _KNOWN_FOR
            if limits.max_queued and seen is not None and seen[1] >= limits.max_queued:
                raise RateLimitedError(
                    f"{seen[1]} runs of this tenant are queued, its limit: wait for some to "
                    "start (more workers drain the queue faster), or ask the operator to raise "
                    "--max-queued-per-tenant",
                    "TOO_MANY_QUEUED_RUNS",
                    retry_after=1.0,
                )
            if wait_ms:
                wait = wait_ms / 1000
                raise RateLimitedError(
                    f"this tenant starts runs faster than its limit of {limits.start_rate:g} "
                    f"per second (bursts of {limits.start_burst}): retry in {wait:.3f} s",
                    "START_RATE_EXCEEDED",
                    retry_after=wait,
                )
        reply = await self._create(
            keys=[
                keys.run_key(run_id),
                keys.events_key(run_id),
                idem,
                keys.runs_key(n, tenant),
                keys.runs_by_workflow_key(n, workflow, tenant),
                keys.queue_key(n, workflow),
                *keys.stats_keys(n),
            ],
            args=[
                run_id,
                workflow,
                input_json,
                json.dumps(labels, sort_keys=True),
                idempotency_key,
                traceparent,
                tenant,
                retention_ms,
                keys.work_channel(n),
            ],
        )
        if _CreateAnswer(int(reply[0])) is _CreateAnswer.CREATED:
            counted = self._queued.get(tenant)
            if counted is not None:  # this replica's own starts count at once
                self._queued[tenant] = (counted[0], counted[1] + 1)
            flat = reply[2]
            return Created(RunRecord.decode(dict(zip(flat[::2], flat[1::2], strict=True))), True)
        return Created(await self.get(str(reply[1]), tenant), False)

    async def by_idempotency_key(self, key: str, tenant: str = "") -> str | None:
        """The run the tenant started with this idempotency key, or None."""
        n = keys.partition_for_key(key, tenant, self.partitions)
        found = await self._redis.get(keys.idempotency_key(n, key, tenant))
        return None if found is None else str(found)

    async def stats(self) -> Stats:
        """Runs by status and queued runs by workflow, kept exact by the scripts, summed
        over the partitions."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in self.partitions:
                _, _, status, queued = keys.stats_keys(n)
                pipe.hgetall(status)
                pipe.hgetall(queued)
            replies = await pipe.execute()
        by_status: dict[str, int] = {}
        by_workflow: dict[str, int] = {}
        for i, reply in enumerate(replies):
            into = by_status if i % 2 == 0 else by_workflow
            for k, v in reply.items():
                into[k] = into.get(k, 0) + int(v)
        return Stats(by_status, by_workflow)

    async def routes(self, run_ids: Sequence[str]) -> list[Route | None]:
        """What the scripts that move these runs must declare (None: the run is gone), in
        one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(keys.run_key(run_id), "workflow", "build", "idem_key", "parent_run_id")
            replies = await pipe.execute()
        return [
            None if workflow is None else Route(workflow, build or "", idem or "", parent or "")
            for workflow, build, idem, parent in replies
        ]

    @staticmethod
    def idem_or_run_key(run_id: str, route: Route | None) -> str:
        """The idempotency key a script declares for the run (its own key when none)."""
        return route.idem_key if route and route.idem_key else keys.run_key(run_id)

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
        max_score = "+inf" if before is None else str(before[0])
        cursors = [
            _Cursor(
                keys.runs_by_workflow_key(n, workflow, tenant)
                if workflow
                else keys.runs_key(n, tenant),
                max_score,
            )
            for n in self.partitions
        ]
        listed: set[str] = set()
        found: list[RunRecord] = []
        sizes: list[int] = []
        scanned = 0
        batch_size = page_size + 1
        # Each partition's index is read in small batches, and the heads merged newest first.
        per_read = max(4, min(batch_size, 2 * batch_size // len(cursors) + 2))
        # A filter that matches few runs would read the whole index for one page: a request
        # reads at most max_scan index entries, and a page that ends there (even an empty one)
        # carries the cursor of the last entry read.
        max_scan = max(_MIN_SCAN, 20 * page_size)
        while True:
            batch = await self._merged(cursors, per_read, batch_size)
            scanned += len(batch)
            # Ties on the millisecond are ordered by id, as the cursor tuple is.
            candidates = [
                run_id
                for score, run_id in batch
                if (before is None or (score, run_id) < before) and run_id not in listed
            ]
            listed.update(candidates)
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
            if len(batch) < batch_size or scanned >= max_scan:
                page = (await self._filled(found, full, max_bytes)).runs
                if len(page) < len(found):  # cut short by what was written meanwhile
                    return RunPage(page, (page[-1].create_ms, page[-1].run_id))
                if len(batch) < batch_size:
                    return RunPage(page, None)
                last_score, last_id = batch[-1]
                return RunPage(page, (last_score, last_id))

    async def _merged(
        self, cursors: list[_Cursor], per_read: int, count: int
    ) -> list[tuple[int, str]]:
        """The next `count` entries (score, run_id) of the partitions' indexes taken
        together, newest first (fewer: they ran out). A partition whose batch ran dry is read
        again before its next entry is compared: all such reads share one round trip."""
        taken: list[tuple[int, str]] = []
        while len(taken) < count:
            dry = [c for c in cursors if not c.buffer and not c.done]
            if dry:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for c in dry:
                        pipe.zrevrangebyscore(
                            c.index, c.high, "-inf", start=c.skip, num=per_read, withscores=True
                        )
                    replies = await pipe.execute()
                for c, reply in zip(dry, replies, strict=True):
                    c.done = len(reply) < per_read
                    c.buffer = [(int(score), str(run_id)) for run_id, score in reversed(reply)]
                    if c.buffer:
                        last = c.buffer[0][0]
                        at_last = sum(1 for score, _ in c.buffer if score == last)
                        same = c.high not in ("+inf", "-inf") and int(float(c.high)) == last
                        c.skip = c.skip + at_last if same else at_last
                        c.high = str(last)
            heads = [c for c in cursors if c.buffer]
            if not heads:
                break
            newest = max(heads, key=lambda c: c.buffer[-1])
            taken.append(newest.buffer.pop())
        return taken

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
        """Cancel a queued, running or waiting run, writing RUN_CANCELLED once."""
        (route,) = await self.routes([run_id])
        n = keys.partition_of(run_id)
        reply = await self._cancel(
            keys=[
                keys.run_key(run_id),
                keys.events_key(run_id),
                keys.leases_key(n),
                keys.steps_key(run_id),
                self.idem_or_run_key(run_id, route),
                keys.waits_key(run_id),
                keys.timers_key(n),
                *keys.family_keys(run_id, route.parent if route else ""),
                *keys.stats_keys(n),
            ],
            args=[reason],
        )
        answer = _CancelAnswer(int(reply[0]))
        if answer is _CancelAnswer.NOT_FOUND:
            raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")
        if answer is _CancelAnswer.ALREADY_ENDED:
            raise FailedPreconditionError(
                f"run {run_id!r} already ended {reply[1]}; only a QUEUED, RUNNING or WAITING run "
                "can be cancelled",
                "RUN_ALREADY_ENDED",
            )
        return CancelOutcome(previous=str(reply[1]), attempt=int(reply[2]), worker_id=str(reply[3]))

    async def status(self, run_id: str) -> str | None:
        """The run's status, or None when it does not exist (any more)."""
        status = await self._redis.hget(keys.run_key(run_id), "status")
        return None if status is None else str(status)
