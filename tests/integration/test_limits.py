"""Cluster-wide limits straight against Redis, as several workers would share them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

import longline
from longline._store import RedisServices, connect


@pytest.fixture
async def worker(redis_url: str) -> AsyncIterator[Callable[[], RedisServices]]:
    """Makes the services of one more worker (each with its own Redis client)."""
    clients: list[aioredis.Redis] = []

    def make() -> RedisServices:
        clients.append(connect(redis_url))
        return RedisServices(clients[-1])

    yield make
    for client in clients:
        await client.aclose()


async def test_a_concurrency_limit_holds_across_workers(
    worker: Callable[[], RedisServices],
) -> None:
    workers = [worker() for _ in range(3)]
    limit = longline.Concurrency("tools", limit=2)
    inside = peak = 0

    async def call(services: RedisServices) -> None:
        nonlocal inside, peak
        release = await services.acquire([limit])
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.02)  # a call in flight
        inside -= 1
        await release()

    await asyncio.gather(*(call(workers[i % 3]) for i in range(12)))
    assert peak == 2


async def test_a_providers_retry_after_holds_back_every_worker_of_the_limit(
    worker: Callable[[], RedisServices],
) -> None:
    limit = longline.RateLimit("provider", requests_per_minute=1000)
    told, other = worker(), worker()
    await told.pause([limit], 0.4)  # one worker got a 429 with Retry-After: 0.4
    started = time.monotonic()
    release = await other.acquire([limit])  # another worker must wait too
    assert time.monotonic() - started >= 0.35
    await release()


async def test_the_request_window_admits_exactly_the_limit(
    worker: Callable[[], RedisServices],
) -> None:
    services = worker()
    limit = longline.RateLimit("tight", requests_per_minute=5)
    for _ in range(5):
        await (await services.acquire([limit]))()
    sixth = asyncio.create_task(services.acquire([limit]))
    done, _ = await asyncio.wait({sixth}, timeout=0.5)
    assert not done, "a sixth request in the same minute was admitted"
    sixth.cancel()
    await asyncio.gather(sixth, return_exceptions=True)
