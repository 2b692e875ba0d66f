"""A Sentinel failover under load: kill -9 of the primary while 20 runs are mid-step.

The planes talk to Redis through the sentinels only. Replication is asynchronous, so a
failover may lose the last writes the old primary acknowledged (events, checkpoints, state
transitions, a terminal one included). The test does not assume otherwise: once with the
replica in sync, once with the replica shut out of the primary for the last seconds before
the kill (so writes are surely lost). What must hold either way: the planes follow the new
primary, and every run still reaches a terminal state, with exactly one terminal event.

The steps count their executions in the test's own plain Redis (LONGLINE_TEST_REDIS, not the
failing one), so a failover cannot lose the count: the number of steps that ran twice is
exact.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

import longline
from tests.chaos.conftest import LEASE
from tests.conftest import eventually
from tests.procs import Proc, start_control_plane, start_workers
from tests.sentinel import SentinelCluster

pytestmark = pytest.mark.slow  # skipped by --skip-slow locally, never in CI

EventType = longline.EventType
RunStatus = longline.RunStatus
TERMINAL = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
LONG, SHORT = 10, 10  # runs of 5 steps of 1.5 s, and of 5 steps of 0.4 s


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as started:
        yield started
        print(started.logs())  # shown when the test failed


async def _statuses(client: longline.Client, run_ids: list[str]) -> list[RunStatus] | None:
    try:
        return [(await client.get_run(r).describe()).status for r in run_ids]
    except longline.LonglineError:  # the control plane cannot reach Redis yet
        return None


async def _events(client: longline.Client, run_id: str) -> list[longline.Event]:
    return [e async for e in client.get_run(run_id).events()]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("behind", [False, True], ids=["replica-in-sync", "replica-behind"])
async def test_kill_9_of_the_primary_under_20_running_runs_leaves_none_stuck(
    cluster: SentinelCluster,
    redis_url: str,
    redis: aioredis.Redis,
    procs: list[Proc],
    behind: bool,
) -> None:
    counters = {"LONGLINE_TEST_REDIS": redis_url}  # the steps' counters: not the failing Redis
    cp, target = await start_control_plane(cluster.url, *LEASE)
    procs.append(cp)
    procs.extend(
        await start_workers(cluster.url, target, ["w1", "w2"], worker_ids=True, env=counters)
    )
    async with longline.Client(target) as client:
        handles = [await client.start("five_steps", {"delay": 1.5}) for _ in range(LONG)]
        handles += [await client.start("five_steps", {"delay": 0.4}) for _ in range(SHORT)]
        run_ids = [h.run_id for h in handles]
        short = run_ids[LONG:]

        async def all_mid_run() -> bool:
            statuses = await _statuses(client, run_ids)
            started = [await redis.hget(f"test:steps:{r}", "1") for r in run_ids]
            return statuses == [RunStatus.RUNNING] * len(run_ids) and all(started)

        await eventually(all_mid_run, what="20 runs inside their steps")
        seen_terminal: dict[str, str] = {}
        if behind:
            cluster.cut_replication()

            # The short runs end while the replica is shut out: what they wrote since is
            # acknowledged by the primary alone, and their end with it.
            async def short_ones_ended() -> bool:
                return await _statuses(client, short) == [RunStatus.SUCCEEDED] * SHORT

            await eventually(short_ones_ended, what="the short runs to end on the old primary")
            for run_id in short:
                seen_terminal[run_id] = next(
                    e.event_id for e in await _events(client, run_id) if e.type.terminal
                )
            primary_offset, replica_offset = cluster.replica_offsets()
            assert primary_offset > replica_offset  # the replica really is behind
        killed_at = time.monotonic()
        old = cluster.kill_primary()

        async def failed_over() -> bool:
            return cluster.failed_over_from(old)

        await eventually(failed_over, timeout=60, what="the sentinels to promote the replica")
        print(f"\nfailover: a new primary {time.monotonic() - killed_at:.1f} s after kill -9")

        async def all_ended() -> list[RunStatus] | None:
            statuses = await _statuses(client, run_ids)
            return statuses if statuses and all(s in TERMINAL for s in statuses) else None

        ended = await eventually(all_ended, timeout=180, what="every run to end")
        print(f"every run ended {time.monotonic() - killed_at:.1f} s after kill -9")
        assert all(p.popen.poll() is None for p in procs)  # no plane died of it

        twice = retried = 0
        for run_id, status in zip(run_ids, ended, strict=True):
            events = await _events(client, run_id)
            terminal = [e for e in events if e.type.terminal]
            assert len(terminal) == 1, (run_id, [(e.type, e.attempt) for e in terminal])
            retried += any(e.type is EventType.RUN_RETRYING for e in events)
            counts = await redis.hgetall(f"test:steps:{run_id}")
            assert sorted(counts) == ["1", "2", "3", "4", "5"]  # every step ran
            twice += sum(1 for n in counts.values() if int(n) > 1)
            if status is RunStatus.SUCCEEDED:
                assert await client.get_run(run_id).result() == {"steps": 5}
            if run_id in seen_terminal:
                # Its first end was lost with the old primary; its lease ran out on the new
                # one, and a new attempt ended it again (after replaying what survived).
                assert seen_terminal[run_id] not in {e.event_id for e in events}
                assert terminal[0].attempt > 1
        print(
            f"runs: {dict(Counter(s.name for s in ended))}; requeued as a new attempt: "
            f"{retried}; steps that ran twice: {twice} of {5 * len(run_ids)}; terminal events "
            f"seen before the failover and lost in it: {len(seen_terminal)}"
        )

        # Every Redis client of both planes is on the new primary, and they work there.
        with cluster.node(cluster.primary_port()).client() as new:
            names = {c["name"] for c in new.client_list()}
        assert {"longline-worker-w1", "longline-worker-w2"} <= names, names
        for reader in ("-events", "-dispatch"):
            assert any(n.startswith("longline-cp-") and n.endswith(reader) for n in names)
        assert await client.run("five_steps", {"delay": 0}) == {"steps": 5}
