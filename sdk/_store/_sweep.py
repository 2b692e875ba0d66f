"""The sweep: what no single transition can remove, removed in the background.

A finished run's own keys expire by themselves (the scripts set their TTL when it ends;
see _keys). What outlives them is removed here, by whichever control-plane replica holds
the sweep for the round:

- index entries (ListRuns' sorted sets) of runs whose keys expired;
- queue entries already acknowledged (a queue stream keeps every entry until trimmed);
- consumers of replicas that are gone (each replica is a consumer of every queue group);
- pinned queues and build ids of builds with no worker, no run and not current;
- and it makes every partition's copy of the current builds whole again, should a promotion
  have been cut short.

Each step reads at most `budget` entries a round, so a round is bounded in time and bytes
whatever the backlog; what is left is taken the next round. Owns `keys.SWEEP_LOCK` (a
string: the replica sweeping this round; it expires by itself after one interval).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from . import _keys as keys
from ._builds import build_counts, load_view, sync_current
from ._connection import redis_time_ms

__all__ = ["SweepReport", "Sweeper", "sweep"]

_PAGE = 500

# KEYS: the queue stream. ARGV: group, consumer. Deletes the consumer only if it has nothing
# pending; returns 1 if it did.
_FORGET_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


@dataclass
class SweepReport:
    """What one round removed."""

    index_entries: int = 0
    queue_entries: int = 0
    consumers: int = 0
    queues: int = 0
    builds: int = 0

    @property
    def anything(self) -> bool:
        """Whether the round removed anything."""
        return any(
            (self.index_entries, self.queue_entries, self.consumers, self.queues, self.builds)
        )


async def _forget_gone_runs(
    redis: aioredis.Redis, index: str, cutoff: int, budget: int, start: str
) -> tuple[int, str]:
    """Remove from one index the runs whose hash is gone, among those created before `cutoff`
    (a run created later cannot have ended and expired yet), reading at most `budget`
    entries from score `start` on; (removed, where the next round starts: '-inf' once it
    reached the cutoff). Runs that never expire (a retention of 0 when they were made, or
    still running) are passed over, not read again every round."""
    removed = read = 0
    low = start
    while read < budget:
        page = await redis.zrangebyscore(index, low, cutoff, start=0, num=_PAGE, withscores=True)
        if not page:
            return removed, "-inf"
        async with redis.pipeline(transaction=False) as pipe:
            for run_id, _ in page:
                pipe.exists(keys.run_key(run_id))
            found = await pipe.execute()
        gone = [run_id for (run_id, _), there in zip(page, found, strict=True) if not there]
        if gone:
            await redis.zrem(index, *gone)
        removed += len(gone)
        read += len(page)
        if len(page) < _PAGE:
            return removed, "-inf"
        # Past the last score read (entries sharing it beyond this page wait for the next
        # pass from the start).
        low = f"({int(page[-1][1])}"
    return removed, low


def _after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _sweep_queue(
    redis: aioredis.Redis, stream: str, idle_consumer_ms: int, report: SweepReport
) -> tuple[int, int]:
    """Trim a queue's acknowledged entries and forget its idle consumers with nothing
    pending; (entries left, entries pending)."""
    groups = await redis.xinfo_groups(stream)
    group = next((g for g in groups if g.get("name") == keys.DISPATCH_GROUP), None)
    if group is None:
        return await redis.xlen(stream), 0
    pending = int(group.get("pending") or 0)
    # Entries up to the group's last delivered one, and before its first pending one, were
    # acknowledged: nobody reads them again.
    floor = _after(str(group.get("last-delivered-id") or "0-0"))
    if pending:
        summary = await redis.xpending(stream, keys.DISPATCH_GROUP)
        first = str(summary.get("min") or floor)
        floor = min(floor, first, key=_id_key)
    report.queue_entries += int(await redis.xtrim(stream, minid=floor, approximate=False))
    for consumer in await redis.xinfo_consumers(stream, keys.DISPATCH_GROUP):
        # A consumer with nothing pending holds nothing: forgetting one that is in fact
        # alive costs nothing, its next read makes it again. Checked again in the same
        # script as the delete, so entries it was handed meanwhile are never dropped.
        if int(consumer.get("pending") or 0) == 0 and int(consumer.get("idle") or 0) > (
            idle_consumer_ms
        ):
            report.consumers += int(
                await redis.eval(_FORGET_CONSUMER, 1, stream, keys.DISPATCH_GROUP, consumer["name"])
            )
    return int(await redis.xlen(stream)), pending


async def sweep(
    redis: aioredis.Redis,
    partitions: tuple[int, ...],
    retention_ms: int,
    *,
    idle_consumer_ms: int = 3_600_000,
    budget: int = 10_000,
    cursors: dict[str, str] | None = None,
) -> SweepReport:
    """One round of the sweep (see the module docstring). `cursors` (index -> score) carries
    where each index's scan stopped from one round to the next."""
    report = SweepReport()
    now = await redis_time_ms(redis)
    if retention_ms > 0:
        cursors = cursors if cursors is not None else {}
        seen: dict[str, str] = {}
        async for index in redis.scan_iter(
            match=keys.PREFIX + "{p*}:runs*", count=500, _type="zset"
        ):
            removed, seen[index] = await _forget_gone_runs(
                redis, index, now - retention_ms, budget, cursors.get(index, "-inf")
            )
            report.index_entries += removed
        cursors.clear()
        cursors.update({k: v for k, v in seen.items() if v != "-inf"})
    empty_pinned: list[str] = []
    async for stream in redis.scan_iter(
        match=keys.PREFIX + "{p*}:queue*", count=500, _type="stream"
    ):
        left, pending = await _sweep_queue(redis, stream, idle_consumer_ms, report)
        if keys.queue_of(stream)[1] and not left and not pending:
            empty_pinned.append(stream)
    workflows = sorted(await redis.hkeys(keys.WORKFLOWS))
    if not workflows:
        return report
    view = await load_view(redis, workflows)
    await sync_current(redis, partitions)
    # (workflow, build) with queued or running runs
    counted = {(w, b) for (w, b, _) in await build_counts(redis, partitions)}

    def forgettable(workflow: str, build: str) -> bool:
        return (
            build != view.current.get(workflow, "")
            and build not in view.live.get(workflow, set())
            and (workflow, build) not in counted
        )

    for stream in empty_pinned:
        workflow, build = keys.queue_of(stream)
        if forgettable(workflow, build):
            report.queues += int(await redis.delete(stream))
    for workflow in workflows:
        past = [b for b in view.builds.get(workflow, set()) if b and forgettable(workflow, b)]
        if past:
            report.builds += int(await redis.srem(keys.builds_key(workflow), *past))
    return report


class Sweeper:
    """The sweep as the control plane's janitor runs it: one replica a round."""

    def __init__(self, redis: aioredis.Redis, partitions: tuple[int, ...]) -> None:
        self._redis = redis
        self._partitions = partitions

    async def take_turn(self, holder: str, ms: int) -> bool:
        """Whether `holder` sweeps this round: the lock is taken for `ms`, and lapses by
        itself if its holder dies mid-round."""
        return bool(await self._redis.set(keys.SWEEP_LOCK, holder, nx=True, px=ms))

    async def sweep(self, retention_ms: int, cursors: dict[str, str]) -> SweepReport:
        """One round (see `sweep`)."""
        return await sweep(self._redis, self._partitions, retention_ms, cursors=cursors)
