"""B8 and B9: runs that fan out and recur.

B8, schedules: a schedule ticking every second on two control-plane replicas; how late each
tick's run starts (the tick's time to its RUN_STARTED). B9, child runs: the onboard_site
example (one child run per page, `ctx.map`, concurrency 16) against the offline model
answering each call after 0.5 s, on one worker and on two (8 slots each): its wall time.

`python -m tests.bench --only B8,B9`, or `python -m tests.bench.fanout` alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

import longline
from longline._embedded import EmbeddedRedis
from longline._store import keys
from longline.testing import Faults, OfflineModel
from tests.bench.b1 import BENCH_FLOWS, NO_LIMITS
from tests.procs import Proc, start_control_plane, start_worker


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ticks(redis_url: str, seconds: int) -> dict[str, Any]:
    """A schedule of every second for `seconds` ticks; lateness of each run's start."""
    procs: list[Proc] = []
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        targets = []
        for n in range(2):
            cp, target = await start_control_plane(redis_url, *NO_LIMITS, name=f"b8-cp{n}")
            procs.append(cp)
            targets.append(target)
        procs.append(
            await start_worker(
                redis_url,
                ",".join(targets),
                "--slots",
                "16",
                module=BENCH_FLOWS,
                workflow="noop",
                name="b8-worker",
            )
        )
        async with longline.Client(",".join(targets)) as client:
            await client.create_schedule("b8", "noop", cron="* * * * * *", overlap="ALLOW_ALL")
            while (await client.get_schedule("b8")).started_runs < seconds:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            schedule = await client.pause_schedule("b8")
            runs, token = [], ""
            while True:
                page, token = await client.list_runs(
                    workflow="noop", page_size=500, page_token=token
                )
                runs += [x for x in page if x.labels.get("longline.schedule") == "b8"]
                if not token:
                    break
        late = []
        for run in runs:
            entries = await r.xrange(keys.events_key(run.run_id))
            started = next(
                (int(eid.split("-")[0]) for eid, f in entries if f.get("t") == "RUN_STARTED"),
                None,
            )
            if started is None:
                continue
            tick = datetime.fromisoformat(run.labels["longline.tick"]).timestamp() * 1000
            late.append(started - tick)
        ticks_seen = sorted(run.labels["longline.tick"] for run in runs)
        return {
            "ticks": len(runs),
            "distinct": len(set(ticks_seen)),
            "missed": schedule.missed_ticks,
            "p50_ms": _pct(late, 0.5),
            "p99_ms": _pct(late, 0.99),
            "max_ms": max(late),
        }
    finally:
        for p in procs:
            p.stop()
        await r.aclose()


async def onboard(redis_url: str, pages: int, workers: int) -> float:
    """Seconds onboard_site takes over `pages` pages on `workers` workers of 8 slots."""
    procs: list[Proc] = []
    model = await OfflineModel(faults=Faults(slow_first_token=0.5)).start()
    os.environ.update(OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="offline")
    try:
        cp, target = await start_control_plane(redis_url, *NO_LIMITS, name="b9-cp")
        procs.append(cp)
        for n in range(workers):
            procs.append(
                await start_worker(
                    redis_url,
                    target,
                    "--slots",
                    "8",
                    module="longline.examples",
                    workflow="onboard_site",
                    name=f"b9-w{n}",
                )
            )
        async with longline.Client(target) as client:
            began = time.perf_counter()
            handle = await client.start("onboard_site", {"pages": pages, "concurrency": 16})
            result = await handle.result()
            took = time.perf_counter() - began
        if result["pages"] != pages:
            raise AssertionError(f"onboard_site learned {result['pages']} of {pages} pages")
        return took
    finally:
        for p in procs:
            p.stop()
        await model.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()

    async def go() -> None:
        with EmbeddedRedis() as server:
            t = await ticks(server.url, args.ticks)
            print(f"B8 {t}")
            for n in (1, 2):
                print(
                    f"B9 onboard_site, {args.pages} pages, {n} worker(s): "
                    f"{await onboard(server.url, args.pages, n):.2f} s"
                )

    asyncio.run(go())


if __name__ == "__main__":
    main()
