"""Child runs under kill -9: of the workers running children, and of the parent's worker."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

import longline
from longline._store import keys
from tests.chaos.conftest import LEASE
from tests.conftest import eventually
from tests.procs import Proc, start_control_plane, start_worker

EventType = longline.EventType
pytestmark = pytest.mark.slow  # skipped by --skip-slow locally, never in CI


async def _all_events(handle: longline.RunHandle) -> list[longline.Event]:
    return [e async for e in handle.events()]


async def _events_so_far(handle: longline.RunHandle) -> list[longline.Event]:
    run = await handle.describe()
    seen = []
    async for e in handle.events():
        seen.append(e)
        if e.event_id == run.last_event_id:
            break
    return seen


def _children_at_once(events: list[longline.Event]) -> int:
    """The most child runs started and not ended at once, by the parent's events."""
    running = most = 0
    for e in events:
        if e.type is EventType.CHILD_STARTED:
            running += 1
            most = max(most, running)
        elif e.type is EventType.CHILD_ENDED:
            running -= 1
    return most


async def _running_at_once(client: longline.Client, child_ids: list[str]) -> int:
    """The most children running at once, by their own events: each from its first
    RUN_STARTED to its terminal event."""
    edges = []
    for child in child_ids:
        events = await _all_events(client.get_run(child))
        start = next(e.time for e in events if e.type is EventType.RUN_STARTED)
        end = next(e.time for e in events if e.type.terminal)
        edges += [(start, 1), (end, -1)]
    running = most = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += step
        most = max(most, running)
    return most


async def _worker_of_last_attempt(handle: longline.RunHandle) -> str:
    started = [e for e in await _events_so_far(handle) if e.type is EventType.RUN_STARTED]
    return str(started[-1].data["worker"])


async def test_fifty_children_survive_worker_kills_and_each_starts_once(
    counters: aioredis.Redis, redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    workers: dict[str, Proc] = {}

    async def worker(name: str) -> None:
        workers[name] = await start_worker(
            redis_url, target, "--worker-id", name, "--slots", "6", *LEASE[2:], name=name
        )
        procs.append(workers[name])

    await worker("w1")
    await worker("w2")
    async with longline.Client(target) as client:
        parent = await client.start("fan_out", {"n": 50, "concurrency": 8, "delay": 0.2})

        async def ended(at_least: int) -> bool:
            events = await _events_so_far(parent)
            return sum(e.type is EventType.CHILD_ENDED for e in events) >= at_least

        await eventually(lambda: ended(10), what="10 children to end")
        workers["w1"].kill()  # kill -9 midway: its children (and maybe the parent) are lost
        await worker("w3")

        async def parked_after(at_least: int) -> bool:
            return await ended(at_least) and (await parent.describe()).status == "WAITING"

        await eventually(lambda: parked_after(25), what="the parent to wait, 25 children on")
        victim = await _worker_of_last_attempt(parent)
        workers[victim].kill()  # the parent's worker, while the parent waits
        await worker("w4")
        result = await parent.result()
        events = await _all_events(parent)
    assert result == [{"i": i, "double": 2 * i} for i in range(50)]
    started = [e.data["child"] for e in events if e.type is EventType.CHILD_STARTED]
    assert len(started) == len(set(started)) == 50
    # START_CHILD counts every child it makes: no child was made twice.
    assert await redis.hget(keys.run_key(parent.run_id), "children") == "50"
    assert len([e for e in events if e.type.terminal]) == 1
    assert _children_at_once(events) <= 8
    # Each child's step ran once, but a step its killed worker was running (at most twice).
    retried = 0
    for child in started:
        count = await counters.hget(f"test:steps:{child}", "0")
        child_events = await _all_events(longline.Client(target).get_run(child))
        if any(e.type is EventType.RUN_RETRYING for e in child_events):
            retried += 1
            assert count in ("1", "2")
        else:
            assert count == "1", child
        assert sum(e.type.terminal for e in child_events) == 1


async def test_map_keeps_its_limit_across_a_retry_of_the_parent(
    counters: aioredis.Redis, redis_url: str, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    workers: dict[str, Proc] = {}
    for name in ("w1", "w2"):
        workers[name] = await start_worker(
            redis_url, target, "--worker-id", name, "--slots", "8", *LEASE[2:], name=name
        )
        procs.append(workers[name])
    async with longline.Client(target) as client:
        # The parent stays RUNNING (a step beside the map waits for test:gate) while its
        # first five children run for a while.
        parent = await client.start(
            "fan_out", {"n": 40, "concurrency": 5, "delay": 0.15, "hold": True}
        )

        async def five_started() -> bool:
            events = await _events_so_far(parent)
            return sum(e.type is EventType.CHILD_STARTED for e in events) == 5

        await eventually(five_started, what="five children to start")
        victim = await _worker_of_last_attempt(parent)
        workers[victim].kill()  # the parent's attempt is lost; its children live on

        async def second_attempt() -> bool:
            return (await parent.describe()).attempt >= 2

        await eventually(second_attempt, what="the parent's next attempt")
        await counters.set("test:gate", 1)
        result = await parent.result()
        events = await _all_events(parent)
        children = [e.data["child"] for e in events if e.type is EventType.CHILD_STARTED]
        by_their_events = await _running_at_once(client, children)
    assert result == [{"i": i, "double": 2 * i} for i in range(40)]
    assert len(children) == len(set(children)) == 40
    assert any(e.type is EventType.RUN_RETRYING for e in events)  # the parent was retried
    assert _children_at_once(events) == 5
    assert by_their_events <= 5
