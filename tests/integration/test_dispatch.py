"""Queue entries handed to a replica are never stranded in its pending list."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

import longline
from longline._store import event_id_key, keys
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from tests.conftest import FLOWS, eventually

# One partition: each workflow's queue is one stream (partition 0's), which the tests read.
ONE = 1


async def _serve_worker(redis_url: str, target: str) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(
        WorkerSettings(
            insecure_no_auth=True,
            redis_url=redis_url,
            control_plane=target,
            slots=2,
            drain_timeout=1,
        ),
        load_workflows(str(FLOWS)),
    )
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.connected.wait(), 10)
    return worker, task


async def _group_created(redis: aioredis.Redis) -> None:
    """Wait until the dispatcher reads the echo queue (it does once a worker has room)."""

    async def created() -> bool:
        return await redis.exists(keys.queue_key(0, "echo")) == 1

    await eventually(created, what="the dispatcher to create the echo queue's group")


async def _known_but_unserved(redis_url: str, target: str, redis: aioredis.Redis) -> None:
    """A worker comes (its workflows become known, their queues read) and goes: runs
    started now wait in their queues."""
    worker, task = await _serve_worker(redis_url, target)
    await _group_created(redis)
    worker.request_stop()
    await task


async def test_entries_delivered_before_a_restart_are_assigned_after_it(
    redis_url: str, redis: aioredis.Redis
) -> None:
    settings = ControlPlaneSettings(
        insecure_no_auth=True,
        redis_url=redis_url,
        listen="127.0.0.1:0",
        replica_id="cp-a",
        partitions=ONE,
    )
    async with ControlPlane(settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        await _known_but_unserved(redis_url, target, redis)
        async with longline.Client(target) as client:
            handle = await client.start("echo", "survives")
        # The replica is handed the entry and dies before it can act on it.
        got = await redis.xreadgroup(
            keys.DISPATCH_GROUP, "cp-a", {keys.queue_key(0, "echo"): ">"}, count=10
        )
        assert got and got[0][1][0][1]["run_id"] == handle.run_id

    async with ControlPlane(settings) as cp:  # the same replica, restarted
        target = f"127.0.0.1:{cp.port}"
        worker, task = await _serve_worker(redis_url, target)
        async with longline.Client(target) as client:
            result = await asyncio.wait_for(client.get_run(handle.run_id).result(), 20)
        assert result == "survives"
        pending = await redis.xpending(keys.queue_key(0, "echo"), keys.DISPATCH_GROUP)
        assert pending["pending"] == 0
        worker.request_stop()
        await task


async def test_entries_held_by_a_replica_that_died_are_taken_over(
    redis_url: str, redis: aioredis.Redis
) -> None:
    settings = ControlPlaneSettings(
        insecure_no_auth=True,
        redis_url=redis_url,
        listen="127.0.0.1:0",
        replica_id="cp-live",
        partitions=ONE,
        reclaim_after=0.3,
    )
    async with ControlPlane(settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        await _known_but_unserved(redis_url, target, redis)
        async with longline.Client(target) as client:
            handle = await client.start("echo", "rescued")
            # Another replica is handed the entry, then dies: it never assigns or acks it.
            got = await redis.xreadgroup(
                keys.DISPATCH_GROUP, "cp-dead", {keys.queue_key(0, "echo"): ">"}, count=10
            )
            assert got and got[0][1][0][1]["run_id"] == handle.run_id
            worker, task = await _serve_worker(redis_url, target)
            assert await asyncio.wait_for(handle.result(), 20) == "rescued"
        pending = await redis.xpending(keys.queue_key(0, "echo"), keys.DISPATCH_GROUP)
        assert pending["pending"] == 0
        worker.request_stop()
        await task


async def test_two_queues_may_hand_out_the_same_entry_id(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Entry ids are unique within one stream only: two runs of two workflows queued in the
    same millisecond get the same id. Read in one round, both are assigned; neither waits in
    the replica's pending list for the reclaim."""
    settings = ControlPlaneSettings(
        insecure_no_auth=True,
        redis_url=redis_url,
        listen="127.0.0.1:0",
        replica_id="cp-ids",
        partitions=ONE,
        reclaim_after=120,
    )
    async with ControlPlane(settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        await _known_but_unserved(redis_url, target, redis)
        async with longline.Client(target) as client:
            first = await client.start("echo", "one")
            second = await client.start("slow", {"steps": 1, "delay": 0.01})
            # A replica that was reading when the worker left hands entries back as new ones:
            # wait until each queue's newest entry is one nobody was handed.
            queues = [keys.queue_key(0, "echo"), keys.queue_key(0, "slow")]

            async def undelivered() -> list[tuple[str, str, dict[str, str]]]:
                tops = []
                for q in queues:
                    [group] = await redis.xinfo_groups(q)
                    [(top, fields)] = await redis.xrevrange(q, count=1)
                    if group["pending"] or event_id_key(group["last-delivered-id"]) >= event_id_key(
                        top
                    ):
                        return []
                    tops.append((q, top, fields))
                return sorted(tops, key=lambda t: event_id_key(t[1]))

            # As two runs queued in the same millisecond would be: one id in both queues.
            (low, low_id, low_fields), (_, high_id, _) = await eventually(
                undelivered, what="both runs to wait in their queues"
            )
            await redis.xadd(low, low_fields, id=high_id)
            await redis.xdel(low, low_id)
            worker, task = await _serve_worker(redis_url, target)
            results = await asyncio.wait_for(asyncio.gather(first.result(), second.result()), 20)
        assert results[0] == "one"
        worker.request_stop()
        await task


async def test_queued_runs_with_large_inputs_reach_a_worker_in_batches_it_can_take(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Assignments queued together go to a worker as one AssignmentBatch, but never more
    than it can receive (gRPC's 4 MiB): six runs of 900 KB inputs, all claimed at once,
    all run, and the worker's stream never breaks."""
    settings = ControlPlaneSettings(
        insecure_no_auth=True, redis_url=redis_url, listen="127.0.0.1:0", partitions=ONE
    )
    async with ControlPlane(settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        await _known_but_unserved(redis_url, target, redis)
        async with longline.Client(target) as client:
            pad = "x" * 900_000
            handles = [await client.start("echo", {"pad": pad, "n": i}) for i in range(6)]
            worker = Worker(
                WorkerSettings(
                    insecure_no_auth=True,
                    redis_url=redis_url,
                    control_plane=target,
                    slots=8,
                    drain_timeout=1,
                    max_event_bytes=2 * 1024 * 1024,
                ),
                load_workflows(str(FLOWS)),
            )
            task = asyncio.create_task(worker.run())
            try:
                results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
                assert [r["n"] for r in results] == list(range(6))
                for h in handles:  # each on its first attempt: no stream broke under it
                    assert (await h.describe()).attempt == 1
            finally:
                worker.request_stop()
                await task
