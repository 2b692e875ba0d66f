"""B7, parked runs: many runs sleeping until the same second wake once each, on time, and a
parked run costs no worker and few bytes in Redis.

`python -m tests.bench --only B7` (or `python -m tests.bench.waits --runs 10000` alone):
two control-plane replicas and one worker as subprocesses; every run sleeps until the same
instant with `ctx.sleep_until`, so all park (WAITING) and both replicas' monitors race to
wake them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import psutil
import redis.asyncio as aioredis

import longline
from longline._embedded import EmbeddedRedis
from longline._store import keys
from tests.bench.b1 import BENCH_FLOWS, NO_LIMITS
from tests.procs import Proc, start_control_plane, start_worker


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _waiting(r: aioredis.Redis) -> int:
    total = 0
    for key in [k async for k in r.scan_iter(match=keys.PREFIX + "{p*}:stats:status")]:
        total += int(await r.hget(key, "WAITING") or 0)
    return total


async def _rss_mb(proc: Proc) -> float:
    return float(psutil.Process(proc.popen.pid).memory_info().rss) / 2**20


async def parked(redis_url: str, runs: int) -> dict[str, Any]:
    """Measure; returns the figures (see `rows` in tests/bench/__main__.py)."""
    procs: list[Proc] = []
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        cp1, target1 = await start_control_plane(redis_url, *NO_LIMITS, name="b7-cp1")
        cp2, target2 = await start_control_plane(redis_url, *NO_LIMITS, name="b7-cp2")
        procs += [cp1, cp2]
        worker = await start_worker(
            redis_url,
            f"{target1},{target2}",
            "--slots",
            "256",
            "--park-after",
            "0",
            module=BENCH_FLOWS,
            workflow="nap",
            name="b7-worker",
        )
        procs.append(worker)
        rss_before = await _rss_mb(worker)
        memory_before = int((await r.info("memory"))["used_memory"])
        # Time to start and park every run first (about 400 a second here), then the instant.
        at = time.time() + 10 + runs / 250
        clients = [longline.Client(t) for t in (target1, target2)]
        try:
            sem = asyncio.Semaphore(64)

            async def start(i: int) -> str:
                async with sem:
                    handle = await clients[i % 2].start("nap", {"at": at})
                    return handle.run_id

            ids = await asyncio.gather(*(start(i) for i in range(runs)))
        finally:
            for c in clients:
                await c.aclose()
        while await _waiting(r) < runs and time.time() < at:  # noqa: ASYNC110 (other processes)
            await asyncio.sleep(0.2)
        all_parked = await _waiting(r)
        memory_parked = int((await r.info("memory"))["used_memory"])
        rss_parked = await _rss_mb(worker)
        sample = ids[:: max(1, runs // 200)]
        per_run = []
        for run_id in sample:
            total = 0
            for key in (
                keys.run_key(run_id),
                keys.events_key(run_id),
                keys.steps_key(run_id),
                keys.waits_key(run_id),
            ):
                total += int(await r.memory_usage(key, samples=0) or 0)
            per_run.append(total)
        timers = 0
        for n in keys.partition_numbers(keys.DEFAULT_PARTITIONS):
            timers += int(await r.memory_usage(keys.timers_key(n), samples=0) or 0)
        # Every run ends: read each run's events straight from its stream.
        deadline = at + 120
        while time.time() < deadline:
            done = 0
            async with r.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.hget(keys.run_key(run_id), "status")
                done = sum(1 for s in await pipe.execute() if s == "SUCCEEDED")
            if done == runs:
                break
            await asyncio.sleep(0.5)
        woke, started, twice = [], [], 0
        for i in range(0, runs, 500):
            async with r.pipeline(transaction=False) as pipe:
                for run_id in ids[i : i + 500]:
                    pipe.xrange(keys.events_key(run_id))
                streams = await pipe.execute()
            for entries in streams:
                resumed = [
                    int(eid.split("-")[0])
                    for eid, f in entries
                    if f.get("t") == "RUN_QUEUED" and f.get("a") == "2"
                ]
                again = [
                    int(eid.split("-")[0])
                    for eid, f in entries
                    if f.get("t") == "RUN_STARTED" and f.get("a") == "2"
                ]
                ends = [eid for eid, f in entries if f.get("t") == "RUN_SUCCEEDED"]
                if len(resumed) != 1 or len(ends) != 1:
                    twice += 1
                if resumed:
                    woke.append(resumed[0] / 1000 - at)
                if again:
                    started.append(again[0] / 1000 - at)
        return {
            "runs": runs,
            "parked": all_parked,
            "succeeded": done,
            "not_once": twice,
            "wake_p50_ms": _pct(woke, 0.5) * 1000,
            "wake_p99_ms": _pct(woke, 0.99) * 1000,
            "wake_max_ms": max(woke) * 1000,
            "started_p50_ms": _pct(started, 0.5) * 1000,
            "started_p99_ms": _pct(started, 0.99) * 1000,
            "bytes_per_parked_run": statistics.median(per_run) + timers / runs,
            "used_memory_per_parked_run": (memory_parked - memory_before) / runs,
            "worker_rss_growth_mb": rss_parked - rss_before,
        }
    finally:
        await r.aclose()
        for p in procs:
            p.stop()


async def main(runs: int) -> None:
    with EmbeddedRedis() as redis:
        for name, value in (await parked(redis.url, runs)).items():
            print(f"{name:>28}: {value:,.1f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().runs))
