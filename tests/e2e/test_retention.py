"""Bounded memory: finished runs leave nothing behind after their retention, and the keys
that never expire do not grow with the number of runs."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

import longline
from longline._store import keys
from tests.conftest import eventually
from tests.procs import Proc, start_control_plane, start_worker


async def _run_many(target: str, n: int, tag: str) -> None:
    gate = asyncio.Semaphore(64)
    async with longline.Client(target) as client:

        async def one(i: int) -> None:
            async with gate:
                # Every fifth with an idempotency key: those keys must go with their runs.
                key = f"{tag}-{i}" if i % 5 == 0 else None
                handle = await client.start("echo", i, idempotency_key=key)
                assert await handle.result() == i

        await asyncio.gather(*(one(i) for i in range(n)))


async def _lasting_keys(redis: aioredis.Redis) -> set[str]:
    """Names of the keys without an expiry (test bookkeeping aside)."""
    names = set()
    async for key in redis.scan_iter(count=1000):
        if not key.startswith("test:") and await redis.pttl(key) == -1:
            names.add(key)
    return names


async def _leftovers(redis: aioredis.Redis) -> list[str]:
    """What is left of finished runs: their keys, idempotency keys and index entries."""
    left = []
    for kind in ("run:", "events:", "steps:", "idem@"):
        pattern = keys.PREFIX + "{p*}:" + kind + "*"
        left += [k async for k in redis.scan_iter(match=pattern, count=1000)]
    async for index in redis.scan_iter(match=keys.PREFIX + "{p*}:runs*", count=1000):
        left += [f"{index} has {await redis.zcard(index)}"]
    return left


async def test_finished_runs_leave_nothing_after_their_retention(
    redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    # Four partitions: the keys that last are a few per partition and workflow served.
    cp, target = await start_control_plane(redis_url, "--retention", "2s", "--partitions", "4")
    procs.append(cp)
    procs.append(await start_worker(redis_url, target, "--slots", "64"))

    await _run_many(target, 100, "warm")
    await eventually(lambda: _none(redis), timeout=30, what="the first 100 runs to expire")
    before = await _lasting_keys(redis)

    await _run_many(target, 1000, "many")
    await eventually(lambda: _none(redis), timeout=60, what="1,000 runs to expire")
    after = await _lasting_keys(redis)
    assert after == before, f"keys without expiry grew: {sorted(after - before)}"
    # Nor do the queues: their acknowledged entries are trimmed.
    await eventually(
        lambda: _trimmed(redis), timeout=30, what="the queue's acknowledged entries to go"
    )
    # A few per workflow served (its workers, builds, known) and per partition (counters,
    # a queue each): not one per run (1,100 ran).
    served = await redis.hlen(keys.WORKFLOWS)
    assert len(after) < 4 * served + 30 * 4, (served, sorted(after))


async def _trimmed(redis: aioredis.Redis) -> bool:
    queues = [k async for k in redis.scan_iter(match=keys.PREFIX + "{p*}:queue:echo")]
    return len(queues) == 4 and all([await redis.xlen(q) == 0 for q in queues])


async def _none(redis: aioredis.Redis) -> bool:
    return not await _leftovers(redis)


async def test_retention_zero_keeps_finished_runs_and_says_so(
    redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, "--retention", "0")
    procs.append(cp)
    procs.append(await start_worker(redis_url, target))
    async with longline.Client(target) as client:
        handle = await client.start("echo", 1)
        assert await handle.result() == 1
    assert await redis.pttl(keys.run_key(handle.run_id)) == -1
    assert await redis.pttl(keys.events_key(handle.run_id)) == -1
    assert "kept FOREVER" in cp.output()


async def test_a_finished_run_expires_with_all_its_keys_after_the_retention(
    redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, "--retention", "1h")
    procs.append(cp)
    procs.append(await start_worker(redis_url, target))
    async with longline.Client(target) as client:
        done = await client.start("counted", {}, idempotency_key="once")
        assert await done.result() == {"steps": 3}
        ttls = [
            await redis.pttl(k)
            for k in (
                keys.run_key(done.run_id),
                keys.events_key(done.run_id),
                keys.steps_key(done.run_id),
                keys.idempotency_key(keys.partition_of(done.run_id), "once"),
            )
        ]
        assert all(3_500_000 < t <= 3_600_000 for t in ttls), ttls
        cancelled = await client.start("slow", {"steps": 1000, "delay": 0.05})
        await cancelled.cancel()
        assert 3_500_000 < await redis.pttl(keys.run_key(cancelled.run_id)) <= 3_600_000
