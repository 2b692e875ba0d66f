"""Attempts: a run's life from claim to end, under a lease, and every write in between.

An attempt holds its run from CLAIM_RUN until a terminal script, a requeue or an expired
lease moves the run on; every write names its holder ("attempt@worker_id", `holder`) and is
refused inside Redis once that holder no longer holds the run (fencing). Owns `keys.LEASES`
(a zset: run_id -> lease expiry of every RUNNING run), `keys.steps_key(run_id)` (a hash: a
run's step checkpoints), the queue entries the requeue scripts add, and the scripts
CLAIM_RUN, REQUEUE_RUN, EXPIRE_LEASE, HEARTBEAT, APPEND_EVENTS and FINISH_RUN (`_scripts`),
which also change the run's hash (`_runs`) and append to its events (`_events`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._errors import LeaseLost
from . import _keys as keys
from . import _scripts
from ._connection import redis_time_ms
from ._loops import Backoff, transient
from ._runs import STATS, Runs

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


@dataclass(frozen=True, slots=True)
class Claimed:
    """The claim landed: the attempt holds the run, on the worker it names."""

    workflow: str
    input_json: str
    traceparent: str


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


def _claimed(reply: Any) -> Claimed | WrongBuild | None:
    answer = _ClaimAnswer(int(reply[0])) if reply else _ClaimAnswer.NOT_THERE
    if answer is _ClaimAnswer.WRONG_BUILD:
        return WrongBuild(str(reply[1]))
    if answer is _ClaimAnswer.CLAIMED:
        return Claimed(str(reply[1]), str(reply[2]), str(reply[3]))
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
        async with self._redis.pipeline(transaction=False) as pipe:
            for r in requests:
                await self._claim(
                    keys=[
                        keys.run_key(r.run_id),
                        keys.LEASES,
                        keys.events_key(r.run_id),
                        keys.BUILDS_CURRENT,
                        *STATS,
                    ],
                    args=[
                        r.attempt,
                        r.worker_id,
                        r.replica_id,
                        r.lease_ms,
                        r.max_attempts,
                        r.build,
                    ],
                    client=pipe,
                )
            # One refused claim (OOM near the memory limit) must not hide the others that
            # landed: each answer stands alone, an error as the exception itself.
            replies = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, RedisError) else _claimed(r) for r in replies]

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
        return _RequeueAnswer(int(done)) is _RequeueAnswer.REQUEUED

    @staticmethod
    def _requeue_keys(run_id: str, workflow: str) -> list[str]:
        return [
            keys.run_key(run_id),
            keys.events_key(run_id),
            keys.queue_key(workflow),
            keys.LEASES,
            keys.steps_key(run_id),
            *STATS,
        ]

    async def take_back(
        self, run_id: str, workflow: str, attempt: int, reason: str, worker_id: str
    ) -> TakeBack:
        """Requeue an assignment `worker_id` never acknowledged, unless it has written for
        the run already (then it has it: STARTED)."""
        done = await self._requeue(
            keys=self._requeue_keys(run_id, workflow),
            args=[holder(attempt, worker_id), reason, "untouched"],
        )
        return {
            _RequeueAnswer.REQUEUED: TakeBack.TAKEN_BACK,
            _RequeueAnswer.STARTED: TakeBack.STARTED,
            _RequeueAnswer.FAILED: TakeBack.TAKEN_BACK,
        }.get(_RequeueAnswer(int(done)), TakeBack.NOT_HELD)

    async def expire_leases(self, lease_timeout: float, limit: int = 100) -> list[Expired]:
        """Requeue (or fail) the runs whose lease ran out."""
        now = await redis_time_ms(self._redis)
        due = await self._redis.zrangebyscore(keys.LEASES, "-inf", now, start=0, num=limit)
        if not due:
            return []
        workflows = await self._runs.workflows_of(due)
        acted = []
        for run_id, workflow in zip(due, workflows, strict=True):
            outcome = await self._expire(
                keys=[
                    keys.run_key(run_id),
                    keys.events_key(run_id),
                    keys.queue_key(workflow or ""),
                    keys.LEASES,
                    keys.steps_key(run_id),
                    *STATS,
                ],
                args=[run_id, f"{lease_timeout:g}"],
            )
            if outcome:
                acted.append(Expired(run_id, str(outcome)))
        return acted

    async def next_lease_expiry_ms(self) -> int | None:
        """When the earliest lease runs out (Redis time, ms), or None with no leases."""
        first = await self._redis.zrange(keys.LEASES, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

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

    async def load_checkpoints(self, run_id: str) -> dict[str, str]:
        """The run's finished steps: step key -> JSON result."""
        return dict(await self._redis.hgetall(keys.steps_key(run_id)))

    async def heartbeat(
        self, attempts: Sequence[tuple[str, int]], lease_ms: int, worker_id: str
    ) -> list[bool]:
        """Extend the leases of (run_id, attempt) pairs `worker_id` holds, in one round trip;
        False = lost."""
        if not attempts:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id, attempt in attempts:
                await self._heartbeat(
                    keys=[keys.run_key(run_id), keys.LEASES],
                    args=[holder(attempt, worker_id), lease_ms],
                    client=pipe,
                )
            replies = await pipe.execute()
        return [bool(r) for r in replies]


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
            return await self._attempts._finish(
                keys=[*self._keys, keys.LEASES, keys.steps_key(self.run_id), *STATS],
                args=[self._holder, seq, status, result_json, *error, *event],
            )

        event_id = await self._send(call)
        if event_id is None:
            raise LeaseLost(self.run_id, self.attempt)
        return str(event_id)
