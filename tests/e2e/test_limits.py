"""A cluster-wide rate limit holds across worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import longline
from longline.testing import OfflineModel
from tests.procs import Proc, start_control_plane, start_workers

pytestmark = pytest.mark.slow  # a minute by nature: 90 calls at 60 per minute


@pytest.fixture
async def model(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OfflineModel]:
    async with OfflineModel() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # inherited by the workers
        monkeypatch.setenv("OPENAI_API_KEY", "offline")
        yield server


# A minute of the clock, once: on the cluster, the limit's scripts (one slot each) run in
# tests/integration/test_limits.py.
@pytest.mark.single_redis
async def test_three_workers_share_one_limit_of_60_per_minute(
    redis_url: str, procs: list[Proc], model: OfflineModel
) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.extend(await start_workers(redis_url, target, [f"worker{n}" for n in range(3)]))
    async with longline.Client(target) as client:
        handles = [await client.start("ask_many", {"tag": f"t{n}", "calls": 30}) for n in range(3)]
        assert await asyncio.gather(*(h.result() for h in handles)) == [30, 30, 30]
    arrivals = sorted(s.arrived for s in model.served)
    assert len(arrivals) == 90 and all(s.status == 200 for s in model.served)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 60) for start in arrivals)
    assert busiest <= 60, f"{busiest} requests reached the model within one minute"
    # and the limit was what held them back: the 61st waited for the window to move
    assert arrivals[60] - arrivals[0] >= 60
