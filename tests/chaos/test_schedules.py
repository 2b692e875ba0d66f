"""A schedule ticking every second on three control-plane replicas, one killed midway."""

from __future__ import annotations

import statistics
from datetime import datetime

import pytest

import longline
from tests.chaos.conftest import LEASE
from tests.conftest import eventually
from tests.procs import Proc, start_control_plane, start_worker

pytestmark = pytest.mark.slow  # skipped by --skip-slow locally, never in CI


async def test_one_run_per_tick_across_replicas_and_a_replica_kill(
    redis_url: str, procs: list[Proc]
) -> None:
    replicas = []
    for n in range(3):
        cp, target = await start_control_plane(redis_url, *LEASE, name=f"cp{n}")
        procs.append(cp)
        replicas.append((cp, target))
    targets = ",".join(t for _, t in replicas)
    procs.append(await start_worker(redis_url, replicas[0][1], "--slots", "8", name="w1"))
    async with longline.Client(targets) as client:
        await client.create_schedule(
            "pulse", "echo", cron="* * * * * *", input={"n": 1}, overlap="ALLOW_ALL"
        )

        async def ticked(n: int) -> bool:
            return (await client.get_schedule("pulse")).started_runs >= n

        await eventually(lambda: ticked(10), what="ten ticks", timeout=30)
        replicas[1][0].kill()  # kill -9 one replica midway
        await eventually(lambda: ticked(20), what="twenty ticks", timeout=30)
        schedule = await client.pause_schedule("pulse")
        runs = []
        token = ""
        while True:
            page, token = await client.list_runs(workflow="echo", page_size=200, page_token=token)
            runs += [r for r in page if r.labels.get("longline.schedule") == "pulse"]
            if not token:
                break
        ticks = sorted(datetime.fromisoformat(r.labels["longline.tick"]) for r in runs)
        # One run per tick, and none missing between the first and the last.
        assert len(ticks) == len(set(ticks)) == schedule.started_runs
        seconds = [round(t.timestamp()) for t in ticks]
        assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))
        assert schedule.missed_ticks == 0 and schedule.skipped_ticks == 0
        # How late each tick's run started (printed; `make bench` has the figures).
        lateness = []
        for r in runs:
            events = [e async for e in client.get_run(r.run_id).events()]
            started = next(e.time for e in events if e.type is longline.EventType.RUN_STARTED)
            tick = datetime.fromisoformat(r.labels["longline.tick"])
            lateness.append((started - tick).total_seconds() * 1000)
        lateness.sort()
        print(
            f"tick to RUN_STARTED over {len(lateness)} ticks: p50 "
            f"{statistics.median(lateness):.0f} ms, max {lateness[-1]:.0f} ms"
        )
