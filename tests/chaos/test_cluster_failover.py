"""Chaos on a Redis Cluster of 3 masters with a replica each: a master killed mid-run.

kill -9 of a master while runs are in flight: its replica is promoted by the cluster (the
nodes time out in 2 s), and until then every script of the partitions it held fails. The
planes' loops retry with backoff, the cluster client learns the new slot map, the event
hub and the dispatcher subscribe again on the new master. Replication is asynchronous, so
the last writes acknowledged by the dead master may be lost: the tests check what must hold
anyway, that every run reaches exactly one terminal event and none is left stuck.
(The worker and control-plane kills of test_chaos run on the cluster in the
--redis-cluster pass of `make test`.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import longline
from longline._store import keys
from tests.chaos.conftest import LEASE
from tests.cluster import RedisCluster, parse_nodes
from tests.conftest import eventually
from tests.procs import Proc, start_control_plane, start_worker

EventType = longline.EventType
# slow: skipped by --skip-slow locally, never in CI; single_redis: it makes its own cluster,
# so the --redis-cluster pass need not run it again.
pytestmark = [pytest.mark.slow, pytest.mark.single_redis]

RUNS = 24


@pytest.fixture
def replicated() -> Iterator[RedisCluster]:
    with RedisCluster(replicas=1) as cluster:
        yield cluster
        # Shown when the test failed: the tails only, so that the planes' logs (printed
        # before these) stay within what a CI report keeps.
        print(cluster.logs(tail=600))


async def test_kill_9_of_a_redis_master_mid_run_every_run_ends_once(
    replicated: RedisCluster, redis_url: str, procs: list[Proc]
) -> None:
    url = replicated.longline_url  # (redis_url: the steps' counters stay in the single server)
    cp, target = await start_control_plane(url, *LEASE)
    procs.append(cp)
    # A second replica that watches nothing until the failover is over: its hub meets the
    # new slot map only when it first subscribes to a channel of the promoted master. Its
    # own channel lives on another master, so nothing of its own fails with the first.
    first = replicated.masters[0].port
    with replicated.node(first).client() as node:
        first_slots = _slots(node)
    quiet = next(
        f"quiet-{i}"
        for i in range(1000)
        if keys.slot(keys.hub_channel(f"quiet-{i}")) not in first_slots
    )
    cp2, target2 = await start_control_plane(url, *LEASE, "--replica-id", quiet, name="cp2")
    procs.append(cp2)
    for name in ("w1", "w2"):
        procs.append(await start_worker(url, target, "--worker-id", name, name=name))
    async with longline.Client(target) as client:
        handles = [await client.start("five_steps", {"delay": 0.3}) for _ in range(RUNS)]

        async def started(handle: longline.RunHandle) -> None:
            async for event in handle.events():
                if event.type is EventType.COMPONENT_STARTED:
                    return

        await asyncio.wait_for(asyncio.gather(*(started(h) for h in handles)), 60)
        old_port = replicated.kill_master(0)  # kill -9 mid-run; its replica takes over
        try:
            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
        except TimeoutError:
            await _report_unended(handles)
            raise
        assert results == [{"steps": 5}] * RUNS
        assert replicated.failed_over_from(old_port)
        for handle in handles:
            events = [e async for e in handle.events()]
            assert len([e for e in events if e.type.terminal]) == 1, events
            assert events[-1].type is EventType.RUN_SUCCEEDED
            ids = [e.event_id for e in events]
            assert len(ids) == len(set(ids))

    # The dispatcher follows the queue notices of the promoted master's partitions there
    # (not a dead node's address, retried until some full read makes up for it).
    promoted = next(r for r, m in replicated.replica_of.items() if m == old_port)
    with replicated.node(promoted).client() as node:
        sharded = bool(node.eval("if redis.REDIS_VERSION_NUM then return 1 end return 0", 0))
        numsub = "SHARDNUMSUB" if sharded else "NUMSUB"
        held = _slots(node)
        owned = [
            keys.work_channel(n)
            for n in keys.partition_numbers(keys.DEFAULT_PARTITIONS)
            if keys.slot(keys.work_channel(n)) in held
        ]
        assert owned

        async def followed() -> bool:
            counts = node.execute_command("PUBSUB", numsub, *owned)
            return all(int(n) >= 1 for n in counts[1::2])

        await eventually(followed, what="the notices of the promoted master's partitions")

        # ... and the quiet replica's event hub watches a run there live: its subscription
        # is on the promoted master (a hub that kept trying the dead one would only catch up
        # from the stream, again and again, while the client resumes).
        async with longline.Client(target2) as client:
            for _ in range(60):  # a third of the runs land there
                handle = await client.start("slow", {"steps": 400, "delay": 0.05})
                if keys.slot(keys.events_key(handle.run_id)) in held:
                    break
            else:
                raise AssertionError("no run landed on the promoted master")

            async def watch() -> None:
                async for _ in handle.events():
                    pass

            watcher = asyncio.create_task(watch())
            channel = keys.events_key(handle.run_id)

            async def watched_live() -> bool:
                counts = node.execute_command("PUBSUB", numsub, channel)
                return int(counts[1]) >= 1

            await eventually(watched_live, what="a live subscription on the promoted master")
            await handle.cancel("seen live")
            await asyncio.wait_for(watcher, 30)


def _slots(node: Any) -> set[int]:
    """The slots the master `node` (a client of it) holds, as it sees itself."""
    me = next(
        v for v in parse_nodes(node.execute_command("CLUSTER", "NODES")) if "myself" in v.flags
    )
    held: set[int] = set()
    for part in me.slots:
        if not part.startswith("["):
            first, _, last = part.partition("-")
            held.update(range(int(first), int(last or first) + 1))
    return held


async def _report_unended(handles: list[longline.RunHandle]) -> None:
    """Print what the runs that did not end were doing (a failed test's report)."""
    for handle in handles:
        try:
            run = await asyncio.wait_for(handle.describe(), 5)
        except Exception as exc:  # noqa: BLE001 - a report, not a check
            print(f"{handle.run_id}: describe failed: {exc!r}")
            continue
        if run.status.terminal:
            continue
        print(f"{handle.run_id}: {run.status.name} attempt {run.attempt}, {run.last_event_id}")
        seen: list[longline.Event] = []
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                async for event in handle.events():
                    seen.append(event)
        print("  " + "; ".join(f"{e.event_id} {e.type.name} {e.message[:60]}" for e in seen))
