"""Waiting runs against real processes: a parked run holds no worker, and wakes right after a
worker kill -9, a replica's loss and a Redis restart."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis.asyncio as aioredis

import longline
from longline._embedded import EmbeddedRedis
from longline._store import keys
from tests.chaos.conftest import LEASE
from tests.conftest import eventually
from tests.procs import Proc, start_control_plane, start_worker

EventType = longline.EventType
pytestmark = pytest.mark.slow  # skipped by --skip-slow locally, never in CI


async def _status(handle: longline.RunHandle, status: str) -> bool:
    return (await handle.describe()).status == status


async def _all_events(handle: longline.RunHandle) -> list[longline.Event]:
    return [e async for e in handle.events()]


async def test_a_sleeping_run_holds_no_slot_and_resumes_elsewhere_after_a_kill(
    counters: aioredis.Redis, redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    first = await start_worker(
        redis_url, target, "--worker-id", "w1", "--slots", "2", "--park-after", "0.5", name="w1"
    )
    procs.append(first)
    async with longline.Client(target) as client:
        sleeper = await client.start("sleeper", {"seconds": 3})
        await eventually(lambda: _status(sleeper, "WAITING"), what="the run to park")
        assert await redis.hget(keys.run_key(sleeper.run_id), "parked_by") == "1@w1"
        # Both of w1's slots take other runs while it sleeps: it holds none.
        gated = [await client.start("gated") for _ in range(2)]
        for handle in gated:
            await eventually(lambda h=handle: _status(h, "RUNNING"), what="a gated run to run")
        assert {await redis.hget(keys.run_key(h.run_id), "worker_id") for h in gated} == {"w1"}
        assert (await sleeper.describe()).status == "WAITING"
        first.kill()  # kill -9 while the run sleeps
        procs.append(
            await start_worker(redis_url, target, "--worker-id", "w2", "--slots", "4", name="w2")
        )
        await counters.set("test:gate", 1)
        assert await sleeper.result() == {"slept": 3, "attempt": 2}
        for handle in gated:
            assert await handle.result() == {"steps": 3}
        events = await _all_events(sleeper)
    started = [e for e in events if e.type is EventType.RUN_STARTED]
    assert [(e.attempt, e.data["worker"]) for e in started] == [(1, "w1"), (2, "w2")]
    assert [e.type for e in events].count(EventType.RUN_RETRYING) == 0
    assert len([e for e in events if e.type.terminal]) == 1
    # None of its finished steps ran twice.
    assert await counters.hgetall(f"test:steps:{sleeper.run_id}") == {"0": "1", "1": "1"}


async def test_waiting_runs_wake_once_across_a_replica_kill_and_a_redis_restart(
    procs: list[Proc],
) -> None:
    with EmbeddedRedis(appendonly=True) as server:
        os.environ["LONGLINE_TEST_REDIS"] = server.url
        timing = ("--lease-timeout", "5", "--heartbeat-interval", "0.5")
        cp1, target1 = await start_control_plane(server.url, *timing, name="cp1")
        cp2, target2 = await start_control_plane(server.url, *timing, name="cp2")
        procs += [cp1, cp2]
        procs.append(await start_worker(server.url, f"{target1},{target2}", "--park-after", "0"))
        async with longline.Client(f"{target1},{target2}") as client:
            sleepers = [await client.start("sleeper", {"seconds": 4}) for _ in range(6)]
            approval = await client.start("approval", {})
            for handle in (*sleepers, approval):
                await eventually(lambda h=handle: _status(h, "WAITING"), what="runs to park")
            cp1.kill()  # the other replica wakes them
            await asyncio.to_thread(server.restart, 1.0)  # down for a second while they wait
            await approval.send_input("approval", {"approved": True})
            results = await asyncio.gather(*(h.result() for h in sleepers))
            assert all(r == {"slept": 4, "attempt": 2} for r in results)
            assert await approval.result() == {"answer": {"approved": True}}
            for handle in (*sleepers, approval):
                events = await _all_events(handle)
                assert len([e for e in events if e.type.terminal]) == 1
                assert [e.type for e in events].count(EventType.RUN_WAITING) == 1
                ids = [e.event_id for e in events]
                assert len(ids) == len(set(ids))
        counters = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            for handle in (*sleepers, approval):
                steps = await counters.hgetall(f"test:steps:{handle.run_id}")
                assert steps == {"0": "1", "1": "1"}
        finally:
            await counters.aclose()


async def test_a_parked_run_wakes_on_its_pinned_build_and_moves_once_that_build_drained(
    counters: aioredis.Redis, redis_url: str, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    timing = ("--park-after", "0", "--drain-timeout", "2")
    v1 = await start_worker(
        redis_url, target, "--build-id", "v1", *timing, workflow="sleeper", name="v1"
    )
    procs.append(v1)
    async with longline.Client(target) as client:
        await client.promote_build("sleeper", "v1")
        soon = await client.start("sleeper", {"seconds": 2})
        later = await client.start("sleeper", {"seconds": 8})
        for handle in (soon, later):
            await eventually(lambda h=handle: _status(h, "WAITING"), what="the runs to park")
        (listed,) = await client.list_builds("sleeper")
        assert [(b.build_id, b.waiting_runs, b.running_runs) for b in listed.builds] == [
            ("v1", 2, 0)
        ]
        procs.append(
            await start_worker(
                redis_url, target, "--build-id", "v2", *timing, workflow="sleeper", name="v2"
            )
        )
        await client.promote_build("sleeper", "v2")  # new runs go to v2; parked ones stay
        assert await soon.result() == {"slept": 2, "attempt": 2}
        assert v1.stop() == 0  # a drain with parked runs: nothing to wait for, nothing lost
        assert await later.result() == {"slept": 8, "attempt": 2}
        soon_events = await _all_events(soon)
        later_events = await _all_events(later)
    builds = [
        [(e.attempt, e.data["build"]) for e in events if e.type is EventType.RUN_STARTED]
        for events in (soon_events, later_events)
    ]
    assert builds[0] == [(1, "v1"), (2, "v1")]  # woke on its pinned build
    assert builds[1] == [(1, "v1"), (2, "v2")]  # its build drained: moved by the policy
    assert any("moved from build v1 to build v2" in e.message for e in later_events)
    for handle in (soon, later):
        assert await counters.hgetall(f"test:steps:{handle.run_id}") == {"0": "1", "1": "1"}
