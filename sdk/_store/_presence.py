"""Which workers are alive and which workflows they serve.

Owns `keys.WORKFLOWS` (a hash: every workflow ever announced -> its description),
`keys.workflow_workers_key(workflow)` (a zset: worker -> when its presence runs out) and
`keys.build_workers_key(workflow)` (a zset: "build\tworker" -> the same, draining workers
left out), which `_builds` reads to route runs. A worker's heartbeat pushes its presence
back; entries an hour past their expiry are removed on the next announcement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from . import _keys as keys
from ._connection import redis_time_ms

__all__ = ["Presence", "WorkflowPresence", "presence_ms"]


def presence_ms(heartbeat_interval: float) -> int:
    """How long a worker counts as live after its last heartbeat: five heartbeats, so that a
    worker slowed down by a busy machine is not taken for gone."""
    return int(heartbeat_interval * 5000)


@dataclass(frozen=True, slots=True)
class WorkflowPresence:
    """An announced workflow and how many live workers serve it."""

    name: str
    description: str
    workers: int
    builds: tuple[str, ...] = ()  # the builds its live workers run, sorted


class Presence:
    """Workers' presence and the workflows they announce."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

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
        now = await redis_time_ms(self._redis)
        member = f"{build}\t{worker_id}"
        async with self._redis.pipeline(transaction=False) as pipe:
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
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in workflows:
                pipe.zrem(keys.workflow_workers_key(name), worker_id)
                pipe.zrem(keys.build_workers_key(name), f"{build}\t{worker_id}")
            await pipe.execute()

    async def known(self, workflow: str) -> bool:
        """Whether any worker ever announced the workflow."""
        return bool(await self._redis.hexists(keys.WORKFLOWS, workflow))

    async def names(self) -> list[str]:
        """Every announced workflow's name, sorted."""
        return sorted(await self._redis.hkeys(keys.WORKFLOWS))

    async def workflows(self) -> list[WorkflowPresence]:
        """Every announced workflow with its live workers, by name."""
        known = await self._redis.hgetall(keys.WORKFLOWS)
        names = sorted(known)
        now = await redis_time_ms(self._redis)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(keys.workflow_workers_key(name), now, "+inf")
                # Members are "BUILD\tWORKER" (see _builds): the builds of the live ones.
                pipe.zrangebyscore(keys.build_workers_key(name), now, "+inf")
            replies = await pipe.execute()
        return [
            WorkflowPresence(
                n,
                known[n],
                int(replies[2 * i]),
                tuple(sorted({m.partition("\t")[0] for m in replies[2 * i + 1]})),
            )
            for i, n in enumerate(names)
        ]
