"""B6: what a finished run keeps in Redis, and what a million of them cost within retention.

For a trivial run (noop) and for the blog_post example (against the offline model), it
measures the bytes of one finished run's keys (MEMORY USAGE of its hash, events and
checkpoints, plus its index entries) and Redis's used_memory growth per run over a batch.

    python -m tests.bench.footprint [--runs 1000] [--blog-posts 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from dataclasses import dataclass

import redis.asyncio as aioredis

import longline
from longline._embedded import EmbeddedRedis
from longline._store import keys
from longline.testing import Faults, OfflineModel
from tests.procs import Proc, start_control_plane, start_worker


@dataclass
class Footprint:
    workflow: str
    runs: int
    keys_bytes: float  # MEMORY USAGE of one run's keys, median
    growth_bytes: float  # used_memory growth per run over the batch
    events: float  # events per run, median


async def _used(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def _run_keys_bytes(redis: aioredis.Redis, run_id: str) -> tuple[int, int]:
    total = 0
    for key in (keys.run_key(run_id), keys.events_key(run_id), keys.steps_key(run_id)):
        total += int(await redis.memory_usage(key, samples=0) or 0)
    # Index entries: three sorted sets (all runs, per workflow) hold ~ id + score each.
    total += 3 * (len(run_id) + 16)
    return total, int(await redis.xlen(keys.events_key(run_id)))


async def measure(
    redis_url: str, target: str, workflow: str, runs: int, input: object
) -> Footprint:
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        before = await _used(redis)
        gate = asyncio.Semaphore(32)
        async with longline.Client(target) as client:

            async def one() -> str:
                async with gate:
                    handle = await client.start(workflow, input)
                    await handle.result()
                    return handle.run_id

            run_ids = await asyncio.gather(*(one() for _ in range(runs)))
        after = await _used(redis)
        sampled = [await _run_keys_bytes(redis, r) for r in run_ids[:: max(1, runs // 50)]]
        return Footprint(
            workflow,
            runs,
            statistics.median(b for b, _ in sampled),
            (after - before) / runs,
            statistics.median(n for _, n in sampled),
        )
    finally:
        await redis.aclose()


async def footprints(redis_url: str, runs: int, blog_posts: int) -> list[Footprint]:
    """Both measurements on a fresh stack (workers of the bench flows and the examples)."""
    procs: list[Proc] = []
    model = await OfflineModel(faults=Faults(token_delay=0.0)).start()
    os.environ.update(OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="offline")
    try:
        cp, target = await start_control_plane(redis_url, name="footprint-cp")
        procs.append(cp)
        procs.append(
            await start_worker(
                redis_url, target, module="tests.bench.flows", workflow="noop", name="footprint-w1"
            )
        )
        procs.append(
            await start_worker(
                redis_url,
                target,
                module="longline.examples",
                workflow="blog_post",
                name="footprint-w2",
            )
        )
        return [
            await measure(redis_url, target, "noop", runs, None),
            await measure(
                redis_url, target, "blog_post", blog_posts, {"topic": "tides", "sections": 3}
            ),
        ]
    finally:
        for p in procs:
            p.stop()
        await model.aclose()


def table(rows: list[Footprint]) -> str:
    lines = [
        f"{'workflow':<10} {'runs':>6} {'events/run':>10} {'keys of a run':>14} "
        f"{'used_memory/run':>16} {'a million runs':>15}"
    ]
    for r in rows:
        million = max(r.keys_bytes, r.growth_bytes) * 1e6 / 2**30
        lines.append(
            f"{r.workflow:<10} {r.runs:>6} {r.events:>10.0f} {r.keys_bytes:>12,.0f} B "
            f"{r.growth_bytes:>14,.0f} B {million:>12,.1f} GiB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--blog-posts", type=int, default=50)
    args = parser.parse_args()

    async def go() -> list[Footprint]:
        with EmbeddedRedis() as server:
            return await footprints(server.url, args.runs, args.blog_posts)

    print(table(asyncio.run(go())))


if __name__ == "__main__":
    main()
