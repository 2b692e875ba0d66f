"""Two control-plane replicas and two workers sharing one Redis, all as real processes."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

import longline
from tests.procs import Proc, start_control_plane, start_worker

RUNS = 40


async def test_runs_started_on_one_replica_are_watched_on_the_other(
    counters: aioredis.Redis, redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp1, target1 = await start_control_plane(redis_url, name="cp1")
    procs.append(cp1)
    cp2, target2 = await start_control_plane(redis_url, name="cp2")
    procs.append(cp2)
    # Each worker talks to a different replica, so assignment must cross replicas.
    procs.append(await start_worker(redis_url, target1, "--slots", "4", name="worker1"))
    procs.append(await start_worker(redis_url, target2, "--slots", "4", name="worker2"))

    async with longline.Client(target1) as starter, longline.Client(target2) as watcher:
        # Runs of 3 x 20 ms, all queued at once: ten times the first worker's slots. (Quick
        # runs started one by one can each end before the next starts, all on that worker.)
        handles = await asyncio.gather(
            *(starter.start("counted", {"n": i, "delay": 0.02}) for i in range(RUNS))
        )

        async def follow(run_id: str) -> list[longline.Event]:
            return [e async for e in watcher.get_run(run_id).events()]

        streams = await asyncio.gather(*(follow(h.run_id) for h in handles))
        for events in streams:
            assert events[-1].type is longline.EventType.RUN_SUCCEEDED
            assert [e.type for e in events].count(longline.EventType.RUN_STARTED) == 1

    for h in handles:  # every step ran exactly once
        assert await counters.hgetall(f"test:steps:{h.run_id}") == {"0": "1", "1": "1", "2": "1"}
    by_worker = await counters.hgetall("test:by_pid")
    assert len(by_worker) == 2, f"both workers should have run steps: {by_worker}"
    assert sum(int(v) for v in by_worker.values()) == RUNS * 3


async def test_run_started_on_one_replica_is_cancelled_from_the_other(
    redis_url: str, procs: list[Proc]
) -> None:
    cp1, target1 = await start_control_plane(redis_url, name="cp1")
    procs.append(cp1)
    cp2, target2 = await start_control_plane(redis_url, name="cp2")
    procs.append(cp2)
    procs.append(await start_worker(redis_url, target1, "--slots", "1", name="worker"))

    async with longline.Client(target1) as one, longline.Client(target2) as two:
        handle = await one.start("slow", {"steps": 100_000, "delay": 0.01})
        async for event in two.get_run(handle.run_id).events():
            if event.type is longline.EventType.STATUS:
                break
        cancelled = await two.get_run(handle.run_id).cancel("from replica two")
        assert cancelled.status is longline.RunStatus.CANCELLED
        events = [e async for e in one.get_run(handle.run_id).events()]
        assert events[-1].type is longline.EventType.RUN_CANCELLED
        # The worker's only slot is free again, so the next run runs.
        assert await two.run("echo", "next") == "next"
