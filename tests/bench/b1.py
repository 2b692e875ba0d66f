"""B1 for longline alone (also usable on its own for profiling):
`python -m tests.bench.b1 --runs 5000` against a fresh local stack."""

from __future__ import annotations

import argparse
import asyncio
import time

import longline
from longline._embedded import EmbeddedRedis
from tests.procs import Proc, start_control_plane, start_worker

BENCH_FLOWS = "tests.bench.flows"
NO_LIMITS = (
    "--start-rate-per-tenant",
    "0",
    "--max-queued-per-tenant",
    "0",
    "--max-streams-per-tenant",
    "0",
)


async def throughput(target: str, runs: int, clients: int = 8, workflow: str = "noop") -> float:
    """runs/s from the first StartRun to the last RUN_SUCCEEDED seen by `clients` clients."""
    pool = [longline.Client(target) for _ in range(clients)]

    async def one(client: longline.Client, i: int) -> None:
        handle = await client.start(workflow, i)
        async for event in handle.events():
            if event.type is longline.EventType.RUN_SUCCEEDED:
                return
        raise RuntimeError(f"run {handle.run_id} did not succeed")

    async def client_share(client: longline.Client, n: int) -> None:
        await asyncio.gather(*(one(client, i) for i in range(n)))

    try:
        shares = [runs // clients + (1 if i < runs % clients else 0) for i in range(clients)]
        t0 = time.perf_counter()
        await asyncio.gather(*(client_share(c, n) for c, n in zip(pool, shares, strict=True)))
        return runs / (time.perf_counter() - t0)
    finally:
        for c in pool:
            await c.aclose()


async def stack(redis_url: str, procs: list[Proc], *extra_cp: str, slots: int = 256) -> str:
    cp, target = await start_control_plane(redis_url, *NO_LIMITS, *extra_cp, name="bench-cp")
    procs.append(cp)
    procs.append(
        await start_worker(
            redis_url, target, "--slots", str(slots), module=BENCH_FLOWS, workflow="noop"
        )
    )
    async with longline.Client(target) as client:
        await client.run("noop")  # warm-up
    return target


async def main(runs: int) -> None:
    procs: list[Proc] = []
    with EmbeddedRedis() as redis:
        try:
            target = await stack(redis.url, procs)
            rate = await throughput(target, runs)
            print(f"B1: {runs} no-op runs, 8 clients: {rate:.0f} runs/s")
        finally:
            for p in procs:
                p.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5000)
    asyncio.run(main(parser.parse_args().runs))
