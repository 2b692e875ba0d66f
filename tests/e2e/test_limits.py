"""A cluster-wide rate limit holds across worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

import longline
from longline._store import keys
from longline.testing import OfflineModel
from tests.procs import Proc, start_control_plane, start_workers

pytestmark = pytest.mark.slow


@pytest.fixture
async def model(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OfflineModel]:
    async with OfflineModel() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # inherited by the workers
        monkeypatch.setenv("OPENAI_API_KEY", "offline")
        yield server


# The window is a minute: rather than wait one out, the test finds the limit 50 of 60 used,
# by calls 58 s ago (as an earlier minute would have left it). On the cluster, the limit's
# scripts (one slot each) run in tests/integration/test_limits.py.
@pytest.mark.single_redis
async def test_three_workers_share_one_limit_of_60_per_minute(
    redis_url: str, redis: aioredis.Redis, procs: list[Proc], model: OfflineModel
) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.extend(await start_workers(redis_url, target, [f"worker{n}" for n in range(3)]))
    seconds, micros = await redis.time()
    earlier = (seconds * 1000 + micros // 1000) - 58_000
    window = keys.limit_key("offline-test", "requests")
    await redis.zadd(window, {f"earlier-{i}": earlier for i in range(50)})
    await redis.pexpire(window, 61_000)
    async with longline.Client(target) as client:
        handles = [await client.start("ask_many", {"tag": f"t{n}", "calls": 10}) for n in range(3)]
        assert await asyncio.gather(*(h.result() for h in handles)) == [10, 10, 10]
    arrivals = sorted(s.arrived for s in model.served)
    assert len(arrivals) == 30 and all(s.status == 200 for s in model.served)
    # Ten places were free: the other twenty calls, from whichever worker, waited until the
    # earlier calls left the window (61 s after them), as one limit across the three.
    free_until = (earlier + 61_000) / 1000
    assert sum(1 for t in arrivals if t < free_until) <= 10
    assert arrivals[10] >= free_until
    every = [earlier / 1000] * 50 + arrivals
    busiest = max(sum(1 for t in every if start <= t < start + 60) for start in every)
    assert busiest <= 60, f"{busiest} calls within one minute"
