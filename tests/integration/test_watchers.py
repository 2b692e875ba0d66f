"""Many watchers share one replica's Redis connections instead of each opening its own."""

from __future__ import annotations

import asyncio

import grpc
import redis.asyncio as aioredis

import longline
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from longline.v1 import runs_pb2, runs_pb2_grpc
from tests.conftest import FLOWS, eventually, on_every_node

WATCHERS = 200
POOL = 8


async def _replica_connections(redis: aioredis.Redis, replica_id: str) -> int:
    """The replica's connections, over every node (of a cluster)."""
    names = [
        c.get("name", "") if isinstance(c, dict) else ""
        for clients in await on_every_node(redis, "CLIENT LIST")
        for c in clients
    ]
    return sum(1 for name in names if name.startswith(f"longline-{replica_id}"))


async def test_200_watchers_use_a_bounded_number_of_redis_connections(
    redis_url: str, redis: aioredis.Redis
) -> None:
    settings = ControlPlaneSettings(
        insecure_no_auth=True,
        redis_url=redis_url,
        listen="127.0.0.1:0",
        redis_pool_size=POOL,
        replica_id="cp-watch",
    )
    async with ControlPlane(settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        worker = Worker(
            WorkerSettings(
                insecure_no_auth=True, redis_url=redis_url, control_plane=target, slots=2
            ),
            load_workflows(str(FLOWS)),
        )
        worker_task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.connected.wait(), 10)
        channel = grpc.aio.insecure_channel(target)
        stub = runs_pb2_grpc.RunServiceStub(channel)
        async with longline.Client(target) as client:
            # A run that keeps emitting until the test lets it finish.
            handle = await client.start("slow", {"steps": 100_000, "delay": 0.1})
            async for event in handle.events():  # running (a fresh replica's first read of
                if event.type is longline.EventType.STATUS:  # its queues can take a moment)
                    break
            seen: list[list[str]] = [[] for _ in range(WATCHERS)]

            async def watch(i: int) -> None:
                async for response in stub.StreamRun(
                    runs_pb2.StreamRunRequest(run_id=handle.run_id)
                ):
                    seen[i].append(response.event.event_id)

            watchers = [asyncio.create_task(watch(i)) for i in range(WATCHERS)]
            await eventually(
                lambda: _value(cp.watchers == WATCHERS),
                what=f"{WATCHERS} live watchers",
            )
            with_all = await _replica_connections(redis, "cp-watch")
            # Per node: the pool + the event reader + the dispatcher's reader. The cancel
            # notices' listener is taken from the pool of a single server; on a cluster it is
            # one connection more, on one node (POOL bounds the commands in flight there).
            nodes = len(await on_every_node(redis, "PING"))
            bound = nodes * (POOL + 2) + (1 if nodes > 1 else 0)
            assert 0 < with_all <= bound, f"{with_all} Redis connections for {WATCHERS} watchers"
            await handle.cancel("done watching")
            await asyncio.wait_for(asyncio.gather(*watchers), 30)
            full = [e.event_id async for e in handle.events()]
            assert all(s == full for s in seen)
            assert len(full) > 3
        await channel.close()
        worker.request_stop()
        await worker_task


async def _value(v: bool) -> bool:
    return v
