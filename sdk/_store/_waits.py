"""Waiting runs: durable sleeps, input requests, inputs, and the timers that wake parked runs.

Owns `keys.waits_key(run_id)` (a hash per run: sleeps' ends, input requests, inputs
received, timeouts; it expires with the run) and `keys.timers_key(n)` (a zset per partition:
run_id -> when a WAITING run wakes). Its scripts are SLEEP_RUN and REQUEST_INPUT (a worker's
fenced writes, sent through `RunWriter.sleep` and `RunWriter.request_input`, which park the
run: RUNNING -> WAITING), SEND_INPUT (an input arrives: kept, and the run requeued when it
waited for it) and WAKE_RUN (a timer is due); they also change the run's hash (`_runs`),
append to its events (`_events`), write its checkpoints (`_attempts`) and queue it
(`_queues`).

Parking is not a lost attempt: the next attempt replays the run's checkpoints, the wait's
own among them (`{"slept": true}`, `{"payload": ...}`, `{"timeout": true}`).
"""

from __future__ import annotations

import enum
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from . import _keys as keys
from . import _scripts
from ._connection import redis_time_ms, scripts_together
from ._errors import FailedPreconditionError, NotFoundError, TooLargeError
from ._loops import transient
from ._runs import Route, Runs

__all__ = ["CHILD_CHECK_MS", "InputOutcome", "Waits"]

# A run waiting for child runs is looked at this often (its timer, set when it parks): a
# child's end that was never recorded in it (a worker of a version before child runs ran the
# child, or the child's record was lost) is found and recorded then (WAKE_RUN).
CHILD_CHECK_MS = 10 * 60_000

log = logging.getLogger("longline.store")


class _SendAnswer(enum.IntEnum):
    """SEND_INPUT's first reply element."""

    KEPT = 1
    DUPLICATE = 2
    NO_RUN = -1
    ENDED = 0
    OTHER_PAYLOAD = 3
    TIMED_OUT = 4
    STALE_BUILD = 5
    ASKED_SINCE = 6
    TOO_MANY = 7


@dataclass(frozen=True, slots=True)
class InputOutcome:
    """What sending an input did: `duplicate` when the same payload had come before."""

    duplicate: bool


class Waits:
    """Inputs sent to runs, and the timers that wake parked runs (the control plane's)."""

    def __init__(self, redis: aioredis.Redis, runs: Runs) -> None:
        self._redis = redis
        self._runs = runs
        self._send = redis.register_script(_scripts.SEND_INPUT)
        self._wake = redis.register_script(_scripts.WAKE_RUN)

    async def send_input(
        self,
        run_id: str,
        name: str,
        payload_json: str,
        sender: str,
        check: Callable[[str], Awaitable[None]],
    ) -> InputOutcome:
        """Keep an input for the run, and deliver it when the run waits for it.

        `payload_json` is canonical JSON (so a payload sent twice compares equal). `check`
        is called with the run's request (its JSON) once the run has asked for this input,
        and raises to refuse the payload (it does not match the schema). Raises
        NotFoundError, FailedPreconditionError (the run ended, another payload came first,
        the request timed out) or TooLargeError (too many inputs nobody asked for).
        """
        n = keys.partition_of(run_id)
        # The payload as it is (canonical already): not parsed again.
        data = (
            f'{{"name":{json.dumps(name)},"payload":{payload_json},'
            f'"sender":{json.dumps(sender, ensure_ascii=False)}}}'
        )
        for _ in range(5):  # again when the run asked, or moved builds, meanwhile
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.run_key(run_id), "workflow", "build", "idem_key")
                pipe.hget(keys.waits_key(run_id), "r:" + name)
                (workflow, build, idem), request = await pipe.execute()
            if workflow is None:
                break
            route = Route(workflow, build or "", idem or "")
            if request is not None:
                await check(str(request))
            reply = await self._send(
                keys=[
                    keys.run_key(run_id),
                    keys.events_key(run_id),
                    keys.waits_key(run_id),
                    keys.steps_key(run_id),
                    keys.timers_key(n),
                    keys.queue_key(n, route.workflow, route.build),
                    *keys.stats_keys(n),
                ],
                args=[
                    name,
                    payload_json,
                    "1" if request is not None else "0",
                    route.build,
                    keys.work_channel(n),
                    data,
                    keys.MAX_EARLY_INPUTS,
                ],
            )
            answer = _SendAnswer(int(reply[0]))
            if answer in (_SendAnswer.STALE_BUILD, _SendAnswer.ASKED_SINCE):
                continue
            if answer in (_SendAnswer.KEPT, _SendAnswer.DUPLICATE):
                return InputOutcome(duplicate=answer is _SendAnswer.DUPLICATE)
            if answer is _SendAnswer.NO_RUN:
                break
            raise _refusal(answer, run_id, name, str(reply[1]) if len(reply) > 1 else "")
        else:
            raise FailedPreconditionError(
                f"run {run_id!r} kept changing while input {name!r} was sent: send it again",
                "RUN_CHANGED",
            )
        raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")

    async def wake_due(self, limit: int = 500) -> list[str]:
        """Requeue the WAITING runs whose timer is due, in every partition (at most `limit`
        a call); the ids of those this call woke. Partitions are read from a random one on,
        so replicas waking at once mostly take different runs."""
        now = await redis_time_ms(self._redis)
        order = list(self._runs.partitions)
        start = random.randrange(len(order))
        order = order[start:] + order[:start]
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in order:
                pipe.zrangebyscore(keys.timers_key(n), "-inf", now, start=0, num=limit)
            due = [str(run_id) for reply in await pipe.execute() for run_id in reply][:limit]
        return await self.wake(due, now)

    async def wake(self, due: list[str], now: int | None = None) -> list[str]:
        """Requeue these WAITING runs where their timer is due (WAKE_RUN checks; a parent
        whose child ended is due at once); the ids of those this call woke."""
        if now is None:
            now = await redis_time_ms(self._redis)
        woken: list[str] = []
        for _ in range(3):  # again for a run whose build changed since it was read
            if not due:
                break
            calls = []
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in due:
                    pipe.hget(keys.run_key(run_id), "wait_children")
                children = [str(c or "").split() for c in await pipe.execute()]
            for run_id, route, kids in zip(
                due, await self._runs.routes(due), children, strict=True
            ):
                route = route or Route("", "", "")  # gone: the script only drops the timer
                n = keys.partition_of(run_id)
                calls.append(
                    (
                        self._wake,
                        [
                            keys.run_key(run_id),
                            keys.events_key(run_id),
                            keys.queue_key(n, route.workflow, route.build),
                            keys.timers_key(n),
                            keys.waits_key(run_id),
                            keys.steps_key(run_id),
                            *(keys.run_key(kid) for kid in kids),
                            *keys.stats_keys(n),
                        ],
                        [run_id, route.build, keys.work_channel(n), CHILD_CHECK_MS],
                    )
                )
            replies = await scripts_together(self._redis, calls, raise_on_error=False)
            stale = []
            refused = {}
            for run_id, outcome in zip(due, replies, strict=True):
                if isinstance(outcome, ResponseError) and not transient(outcome):
                    refused[run_id] = outcome  # this run's record; the others go on
                elif isinstance(outcome, RedisError):
                    raise outcome  # Redis itself (a failover, a slot moving): backed off
                elif isinstance(outcome, Exception):  # a cluster client's own error
                    raise RedisError(f"{type(outcome).__name__}: {outcome}") from outcome
                elif outcome == "stale":
                    stale.append(run_id)
                elif outcome == "woken":
                    woken.append(run_id)
            if refused:
                # A record the script cannot act on (written by another version, or broken
                # by hand): said, and looked at again in a minute rather than every round.
                for run_id, error in refused.items():
                    log.error("could not wake run %s: %s; trying again in a minute", run_id, error)
                async with self._redis.pipeline(transaction=False) as pipe:
                    for run_id in refused:
                        n = keys.partition_of(run_id)
                        pipe.zadd(keys.timers_key(n), {run_id: now + 60_000}, xx=True)
                    await pipe.execute()
            due = stale
        return woken

    async def next_wake_ms(self) -> int | None:
        """When the earliest timer of any partition is due (Redis time, ms), or None."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in self._runs.partitions:
                pipe.zrange(keys.timers_key(n), 0, 0, withscores=True)
            firsts = [int(r[0][1]) for r in await pipe.execute() if r]
        return min(firsts) if firsts else None


def _refusal(answer: _SendAnswer, run_id: str, name: str, status: str) -> Exception:
    if answer is _SendAnswer.ENDED:
        return FailedPreconditionError(
            f"run {run_id!r} already ended {status}: it takes no more input",
            "RUN_ALREADY_ENDED",
        )
    if answer is _SendAnswer.OTHER_PAYLOAD:
        return FailedPreconditionError(
            f"run {run_id!r} already received another payload for input {name!r}: an input "
            "is answered once (sending the same payload again is accepted)",
            "INPUT_ALREADY_RECEIVED",
        )
    if answer is _SendAnswer.TIMED_OUT:
        return FailedPreconditionError(
            f"run {run_id!r} stopped waiting for input {name!r}: its timeout passed, and the "
            "workflow went on without it",
            "INPUT_TIMED_OUT",
        )
    return TooLargeError(
        f"run {run_id!r} already keeps {keys.MAX_EARLY_INPUTS} inputs it has not asked for: "
        f"input {name!r} is refused until the run asks for it",
        "TOO_MANY_INPUTS",
    )
