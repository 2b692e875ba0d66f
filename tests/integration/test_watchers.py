"""Many watchers share one replica's Redis connections instead of each opening its own."""

from __future__ import annotations

import asyncio

import grpc
import redis.asyncio as aioredis

import longline
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from longline.v1 import runs_pb2, runs_pb2_grpc
from tests.conftest import FLOWS, eventually

WATCHERS = 200
POOL = 8


async def _replica_connections(redis: aioredis.Redis, replica_id: str) -> int:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("name", "").startswith(f"longline-{replica_id}"))


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
            # pool + event reader + dispatcher reader + pub/sub listener (taken from the pool)
            assert 0 < with_all <= POOL + 2, f"{with_all} Redis connections for {WATCHERS} watchers"
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
