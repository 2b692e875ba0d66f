"""Attempts: a run's life from claim to end, under a lease, and every write in between.

An attempt holds its run from CLAIM_RUN until a terminal script, a requeue or an expired
lease moves the run on; every write names its holder ("attempt@worker_id", `holder`) and is
refused inside Redis once that holder no longer holds the run (fencing). Owns
`keys.leases_key(n)` (a zset per partition: run_id -> lease expiry of every RUNNING run),
`keys.steps_key(run_id)` (a hash: a run's step checkpoints), the queue entries the requeue
scripts add, and the scripts CLAIM_RUN, REQUEUE_RUN, EXPIRE_LEASE, HEARTBEAT, APPEND_EVENTS
and FINISH_RUN (`_scripts`), which also change the run's hash (`_runs`) and append to its
events (`_events`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._errors import LeaseLost
from . import _keys as keys
from . import _scripts
from ._connection import redis_time_ms, scripts_together
from ._loops import Backoff, transient
from ._runs import Route, Runs
from ._waits import CHILD_CHECK_MS

__all__ = [
    "Attempts",
    "ClaimRequest",
    "Claimed",
    "Expired",
    "RunWriter",
    "TakeBack",
    "WrongBuild",
    "holder",
]

log = logging.getLogger("longline.store")


def holder(attempt: int, worker_id: str) -> str:
    """How a fenced write names who it comes from: the attempt, on that very worker."""
    return f"{attempt}@{worker_id}"


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """An attempt of a queued run to make RUNNING on a worker (see Attempts.claim_many)."""

    run_id: str
    attempt: int
    worker_id: str
    replica_id: str  # the replica assigning it
    lease_ms: int
    max_attempts: int
    build: str = ""  # the worker's build
    # The attempt's span id: the claim writes RUN_STARTED with it ('' = the worker does).
    span_id: str = ""


@dataclass(frozen=True, slots=True)
class Claimed:
    """The claim landed: the attempt holds the run, on the worker it names."""

    workflow: str
    input_json: str
    traceparent: str
    labels_json: str = ""  # the run's labels, a JSON object
    idem_key: str = ""  # the run's idempotency record ('' = none), as RunWriter.open reads it
    parent_run_id: str = ""
    tenant: str = ""
    checkpoints: int = 0  # step checkpoints the run holds
    span_id: str = ""  # the span of the RUN_STARTED the claim wrote ('' = none: the worker writes)


@dataclass(frozen=True, slots=True)
class WrongBuild:
    """Not claimed: the run has not started yet, and `current` is the build new runs go to."""

    current: str


class TakeBack(enum.Enum):
    """What taking back an unacknowledged assignment did."""

    TAKEN_BACK = "taken back"  # requeued (or failed, having come back too often)
    STARTED = "started"  # the worker has written for it: it has the run after all
    NOT_HELD = "not held"  # the attempt no longer holds the run (it ended, or moved on)


@dataclass(frozen=True, slots=True)
class Expired:
    """A run whose lease ran out, and what EXPIRE_LEASE did: "requeued" or "failed"."""

    run_id: str
    outcome: str


class _ClaimAnswer(enum.IntEnum):
    """CLAIM_RUN's first reply element."""

    CLAIMED = 1
    NOT_THERE = 0  # cancelled, or this attempt was taken already
    WRONG_BUILD = -1


class _RequeueAnswer(enum.IntEnum):
    """REQUEUE_RUN's reply."""

    NOT_HELD = 0
    REQUEUED = 1
    STARTED = 2  # mode 'untouched' only: the attempt has written already
    FAILED = 3  # modes 'untouched' and 'stopped' only: it came back too often, and failed
    STALE = 4  # the run's build is not the one read before: read again


def _claim_answer(reply: Any) -> Claimed | WrongBuild | None | RedisError:
    """A claim's answer, or the error that refused that one claim (a cluster client's own
    errors, such as a slot not covered, count as Redis errors of that claim)."""
    if isinstance(reply, RedisError):
        return reply
    if isinstance(reply, Exception):
        return RedisError(f"{type(reply).__name__}: {reply}")
    return _claimed(reply)


def _claimed(reply: Any) -> Claimed | WrongBuild | None:
    answer = _ClaimAnswer(int(reply[0])) if reply else _ClaimAnswer.NOT_THERE
    if answer is _ClaimAnswer.WRONG_BUILD:
        return WrongBuild(str(reply[1]))
    if answer is _ClaimAnswer.CLAIMED:
        return Claimed(
            str(reply[1]),
            str(reply[2]),
            str(reply[3]),
            str(reply[4]),
            str(reply[5]),
            str(reply[6]),
            str(reply[7]),
            int(reply[8]),
            str(reply[9]),
        )
    return None


class Attempts:
    """Claims, leases, requeues and checkpoints of runs' attempts."""

    def __init__(self, redis: aioredis.Redis, runs: Runs) -> None:
        self._redis = redis
        self._runs = runs
        self._claim = redis.register_script(_scripts.CLAIM_RUN)
        self._requeue = redis.register_script(_scripts.REQUEUE_RUN)
        self._append = redis.register_script(_scripts.APPEND_EVENTS)
        self._finish = redis.register_script(_scripts.FINISH_RUN)
        self._heartbeat = redis.register_script(_scripts.HEARTBEAT)
        self._expire = redis.register_script(_scripts.EXPIRE_LEASE)
        self._sleep = redis.register_script(_scripts.SLEEP_RUN)
        self._request_input = redis.register_script(_scripts.REQUEST_INPUT)
        self._start_child = redis.register_script(_scripts.START_CHILD)
        self._wait_children = redis.register_script(_scripts.WAIT_CHILDREN)

    async def claim(self, request: ClaimRequest) -> Claimed | WrongBuild | None:
        """Make an attempt of a queued run RUNNING on a worker of the request's build,
        pinning the run to it. None when the attempt is not there to take (cancelled, or
        taken); WrongBuild when the run has not started yet and the build is not current."""
        answer = (await self.claim_many([request]))[0]
        if isinstance(answer, RedisError):
            raise answer
        return answer

    async def claim_many(
        self, requests: Sequence[ClaimRequest]
    ) -> list[Claimed | WrongBuild | None | RedisError]:
        """Several claims in one round trip; each answer as claim() gives it, or the Redis
        error that refused that one claim."""
        if not requests:
            return []
        calls = []
        for r in requests:
            n = keys.partition_of(r.run_id)
            claim_keys = [
                keys.run_key(r.run_id),
                keys.leases_key(n),
                keys.events_key(r.run_id),
                keys.builds_current_key(n),
                keys.steps_key(r.run_id),
                *keys.stats_keys(n),
            ]
            args = [
                r.attempt,
                r.worker_id,
                r.replica_id,
                r.lease_ms,
                r.max_attempts,
                r.build,
                r.span_id,
            ]
            calls.append((self._claim, claim_keys, args))
        # One refused claim (OOM near the memory limit) must not hide the others that
        # landed: each answer stands alone, an error as the exception itself.
        replies = await scripts_together(self._redis, calls, raise_on_error=False)
        return [_claim_answer(r) for r in replies]

    async def requeue(
        self,
        run_id: str,
        attempt: int,
        reason: str,
        worker_id: str,
        *,
        stopped: bool = False,
    ) -> bool:
        """Put an attempt `worker_id` holds back in the queue as the next attempt; False if
        that worker does not hold it. `stopped`: the worker stopped it because it could not
        renew its lease (free three times per run, then a lost attempt; see REQUEUE_RUN)."""
        done = await self._requeue_as(
            run_id, holder(attempt, worker_id), reason, "stopped" if stopped else ""
        )
        return done is _RequeueAnswer.REQUEUED

    async def _requeue_as(
        self, run_id: str, held_by: str, reason: str, mode: str
    ) -> _RequeueAnswer:
        # The run's build names the queue the script declares: read first, and read again
        # should it have changed in between (it does not, once a run is RUNNING).
        for _ in range(3):
            (route,) = await self._runs.routes([run_id])
            if route is None:
                return _RequeueAnswer.NOT_HELD
            done = _RequeueAnswer(
                int(
                    await self._requeue(
                        keys=self._requeue_keys(run_id, route),
                        args=[held_by, reason, mode, route.build, self._channel(run_id)],
                    )
                )
            )
            if done is not _RequeueAnswer.STALE:
                return done
        return _RequeueAnswer.NOT_HELD

    @staticmethod
    def _channel(run_id: str) -> str:
        return keys.work_channel(keys.partition_of(run_id))

    @staticmethod
    def _requeue_keys(run_id: str, route: Route) -> list[str]:
        n = keys.partition_of(run_id)
        return [
            keys.run_key(run_id),
            keys.events_key(run_id),
            keys.queue_key(n, route.workflow, route.build),
            keys.leases_key(n),
            keys.steps_key(run_id),
            Runs.idem_or_run_key(run_id, route),
            keys.waits_key(run_id),
            *keys.family_keys(run_id, route.parent),
            *keys.stats_keys(n),
        ]

    async def take_back(self, run_id: str, attempt: int, reason: str, worker_id: str) -> TakeBack:
        """Requeue an assignment `worker_id` never acknowledged, unless it has written for
        the run already (then it has it: STARTED)."""
        done = await self._requeue_as(run_id, holder(attempt, worker_id), reason, "untouched")
        return {
            _RequeueAnswer.REQUEUED: TakeBack.TAKEN_BACK,
            _RequeueAnswer.STARTED: TakeBack.STARTED,
            _RequeueAnswer.FAILED: TakeBack.TAKEN_BACK,
        }.get(done, TakeBack.NOT_HELD)

    async def expire_leases(self, lease_timeout: float, limit: int = 100) -> list[Expired]:
        """Requeue (or fail) the runs whose lease ran out, in every partition."""
        now = await redis_time_ms(self._redis)
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in self._runs.partitions:
                pipe.zrangebyscore(keys.leases_key(n), "-inf", now, start=0, num=limit)
            due = [run_id for reply in await pipe.execute() for run_id in reply][:limit]
        acted = []
        for _ in range(3):  # again for a run whose build changed since it was read
            if not due:
                break
            stale = []
            for run_id, route in zip(due, await self._runs.routes(due), strict=True):
                route = route or Route("", "", "")  # gone: the script only drops the lease
                outcome = await self._expire(
                    keys=self._requeue_keys(run_id, route),
                    args=[run_id, f"{lease_timeout:g}", route.build, self._channel(run_id)],
                )
                if outcome == "stale":
                    stale.append(run_id)
                elif outcome:
                    acted.append(Expired(run_id, str(outcome)))
            due = stale
        return acted

    async def next_lease_expiry_ms(self) -> int | None:
        """When the earliest lease of any partition runs out (Redis time, ms), or None with
        no leases."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in self._runs.partitions:
                pipe.zrange(keys.leases_key(n), 0, 0, withscores=True)
            firsts = [int(r[0][1]) for r in await pipe.execute() if r]
        return min(firsts) if firsts else None

    async def held_by(
        self, worker_id: str, attempts: Sequence[tuple[str, int]], workflows: set[str]
    ) -> dict[str, int]:
        """Of the (run_id, attempt) pairs a worker says it runs, those Redis agrees with: the
        attempt holds the run, on that worker, for one of `workflows`."""
        if not attempts:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
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

    async def heartbeat(
        self, attempts: Sequence[tuple[str, int]], lease_ms: int, worker_id: str
    ) -> list[bool]:
        """Extend the leases of (run_id, attempt) pairs `worker_id` holds, in one round trip;
        False = lost."""
        if not attempts:
            return []
        calls = [
            (
                self._heartbeat,
                [keys.run_key(run_id), keys.leases_key(keys.partition_of(run_id))],
                [holder(attempt, worker_id), lease_ms],
            )
            for run_id, attempt in attempts
        ]
        return [bool(r) for r in await scripts_together(self._redis, calls)]


class _HasAttempts(Protocol):
    attempts: Attempts


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
        store: _HasAttempts,
        run_id: str,
        attempt: int,
        worker_id: str,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._attempts = store.attempts
        self.run_id = run_id
        self.attempt = attempt
        self._holder = holder(attempt, worker_id)
        self._alive = alive
        self._seq = 0
        self._lock = asyncio.Lock()
        self._keys = [keys.run_key(run_id), keys.events_key(run_id)]
        self._idem: str | None = None  # the run's idempotency key, read once (see finish)
        self.parent = ""  # the run's parent run ('' = none), read with it
        self.tenant = ""  # the run's tenant, read with it (its children's)

    def opened(self, idem_key: str, parent_run_id: str, tenant: str) -> None:
        """What `open` reads, told by the claim instead (Assignment.started): no round trip."""
        self._idem, self.parent, self.tenant = idem_key, parent_run_id, tenant

    async def checkpoints(self) -> dict[str, str]:
        """The run's step checkpoints (step key -> JSON result)."""
        return dict(await self._attempts._redis.hgetall(keys.steps_key(self.run_id)))

    async def open(self) -> dict[str, str]:
        """The run's step checkpoints (step key -> JSON result), read with what `finish`
        must declare, in one round trip."""
        async with self._attempts._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.steps_key(self.run_id))
            pipe.hmget(keys.run_key(self.run_id), "idem_key", "parent_run_id", "tenant")
            steps, (idem, parent, tenant) = await pipe.execute()
        self._idem = idem or ""
        self.parent = parent or ""
        self.tenant = tenant or ""
        return dict(steps)

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
            return await self._attempts._append(
                keys=[*self._keys, keys.steps_key(self.run_id)], args=args
            )

        ids = await self._send(call)
        if ids is None:
            raise LeaseLost(self.run_id, self.attempt)
        return [str(i) for i in ids] or [""] * len(events)

    def _wait_keys(self, *more: str) -> list[str]:
        n = keys.partition_of(self.run_id)
        return [
            *self._keys,
            keys.leases_key(n),
            keys.timers_key(n),
            keys.waits_key(self.run_id),
            *more,
            *keys.stats_keys(n),
        ]

    async def sleep(
        self, step: str, *, delay_ms: int | None, until_ms: int | None, park_after_ms: int
    ) -> tuple[bool, int]:
        """Begin (or go on with) the durable sleep `step`: (True, ms left) when it parked
        the run, or (False, ms left) to sleep in memory (0 or less: it is over). Its end is
        recorded the first time, by Redis's clock (`_waits`)."""

        async def call(seq: int) -> Any:
            return await self._attempts._sleep(
                keys=self._wait_keys(),
                args=[
                    self._holder,
                    seq,
                    step,
                    "" if delay_ms is None else delay_ms,
                    "" if until_ms is None else until_ms,
                    park_after_ms,
                ],
            )

        reply = await self._send(call)
        if reply is None:
            raise LeaseLost(self.run_id, self.attempt)
        return bool(int(reply[0])), int(reply[1])

    async def request_input(
        self,
        step: str,
        name: str,
        request_json: str,
        timeout_ms: int | None,
        has_schema: bool,
        *,
        take: str = "",
        refuse: str = "",
        why: str = "",
        park: bool = True,
    ) -> tuple[int, str]:
        """Ask for input `name` (the first call writes INPUT_REQUESTED), and park the run
        until it comes unless it is here (or, without `park`, answer 4 where it would have
        parked): REQUEST_INPUT's answer (code, payload)."""

        async def call(seq: int) -> Any:
            return await self._attempts._request_input(
                keys=self._wait_keys(keys.steps_key(self.run_id)),
                args=[
                    self._holder,
                    seq,
                    name,
                    step,
                    request_json,
                    "" if timeout_ms is None else timeout_ms,
                    take,
                    refuse,
                    why,
                    "1" if has_schema else "0",
                    "1" if park else "0",
                ],
            )

        reply = await self._send(call)
        if reply is None:
            raise LeaseLost(self.run_id, self.attempt)
        return int(reply[0]), str(reply[1]) if len(reply) > 1 else ""

    async def start_child(
        self,
        step: str,
        workflow: str,
        input_json: str,
        *,
        traceparent: str = "",
        detached: bool = False,
        span_id: str = "",
        parent_span_id: str = "",
    ) -> tuple[bool, str]:
        """Start a child run of `workflow` at `step`, once: (True, the step's checkpoint)
        when this call started it, (False, checkpoint) when an earlier write had. The child
        is queued in this run's partition (see START_CHILD); ValueError past MAX_CHILDREN."""
        n = keys.partition_of(self.run_id)
        child_id = keys.run_id_in(n, uuid.uuid4().hex)
        data = json.dumps(
            {"child": child_id, "workflow": workflow, "step": step, "detached": detached}
        )

        async def call(seq: int) -> Any:
            return await self._attempts._start_child(
                keys=[
                    keys.run_key(self.run_id),
                    keys.events_key(self.run_id),
                    keys.steps_key(self.run_id),
                    keys.children_key(self.run_id),
                    keys.run_key(child_id),
                    keys.events_key(child_id),
                    keys.runs_key(n, self.tenant),
                    keys.runs_by_workflow_key(n, workflow, self.tenant),
                    keys.queue_key(n, workflow),
                    *keys.stats_keys(n),
                ],
                args=[
                    self._holder,
                    seq,
                    step,
                    child_id,
                    workflow,
                    input_json,
                    "{}",
                    traceparent,
                    "1" if detached else "0",
                    span_id,
                    parent_span_id,
                    keys.work_channel(n),
                    keys.MAX_CHILDREN,
                    data,
                ],
            )

        reply = await self._send(call)
        if reply is None:
            raise LeaseLost(self.run_id, self.attempt)
        if int(reply[0]) == 2:
            raise ValueError(
                f"run {self.run_id} has started {keys.MAX_CHILDREN} child runs, as many as a "
                "run may: split the work over runs that each start fewer"
            )
        return int(reply[0]) == 1, str(reply[1])

    async def wait_children(
        self, wait_step: str, steps: Sequence[str], *, park: bool = True
    ) -> tuple[int, dict[str, str]]:
        """Of the children started at `steps`, those that ended: (0, step -> checkpoint);
        else park the run until one ends (1, {}), or, without `park`, answer (4, {})."""

        async def call(seq: int) -> Any:
            return await self._attempts._wait_children(
                keys=self._wait_keys(keys.steps_key(self.run_id)),
                args=[
                    self._holder,
                    seq,
                    wait_step,
                    "1" if park else "0",
                    len(steps),
                    *steps,
                    CHILD_CHECK_MS,
                ],
            )

        reply = await self._send(call)
        if reply is None:
            raise LeaseLost(self.run_id, self.attempt)
        flat = [str(x) for x in reply[1:]]
        return int(reply[0]), dict(zip(flat[::2], flat[1::2], strict=True))

    async def finish(
        self,
        status: str,
        *,
        result_json: str = "",
        error: tuple[str, str, str] = ("", "", ""),
        event: list[str],
    ) -> str:
        """Write the terminal state and event at once; error is (type, message, component)."""
        n = keys.partition_of(self.run_id)

        async def call(seq: int) -> Any:
            if self._idem is None:  # not opened: the script must declare the run's keys
                idem, parent = await self._attempts._redis.hmget(
                    self._keys[0], "idem_key", "parent_run_id"
                )
                self._idem, self.parent = idem or "", parent or ""
            return await self._attempts._finish(
                keys=[
                    *self._keys,
                    keys.leases_key(n),
                    keys.steps_key(self.run_id),
                    self._idem or self._keys[0],
                    keys.waits_key(self.run_id),
                    *keys.family_keys(self.run_id, self.parent),
                    *keys.stats_keys(n),
                ],
                args=[self._holder, seq, status, result_json, *error, *event],
            )

        event_id = await self._send(call)
        if event_id is None:
            raise LeaseLost(self.run_id, self.attempt)
        return str(event_id)
