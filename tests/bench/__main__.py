"""`make bench`: timing figures, printed as a table and written to tests/bench/results/.

Timing targets live here, never in `make test`. Everything runs on loopback with
one Redis, the control plane and the worker as real subprocesses.

    python -m tests.bench [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time

import longline
from longline._embedded import EmbeddedRedis
from tests.conftest import ROOT
from tests.procs import Proc, start_control_plane, start_worker

RESULTS = ROOT / "tests" / "bench" / "results"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def bench(runs: int) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    procs: list[Proc] = []
    with EmbeddedRedis() as redis:
        try:
            cp, target = await start_control_plane(redis.url)
            procs.append(cp)
            procs.append(await start_worker(redis.url, target, "--slots", "256"))
            async with longline.Client(target) as client:
                await client.run("echo", "warm-up")

                t0 = time.perf_counter()
                handles = await asyncio.gather(*(client.start("echo", i) for i in range(runs)))
                await asyncio.gather(*(h.result() for h in handles))
                wall = time.perf_counter() - t0
                rows.append(
                    (
                        f"{runs} trivial runs, started together",
                        f"{wall:.2f} s",
                        f"{runs / wall:.0f} runs/s",
                    )
                )

                latencies = []
                t0 = time.perf_counter()
                for i in range(runs):
                    s = time.perf_counter()
                    await client.run("echo", i)
                    latencies.append((time.perf_counter() - s) * 1000)
                wall = time.perf_counter() - t0
                rows.append(
                    (
                        f"{runs} trivial runs, one at a time",
                        f"{wall:.2f} s",
                        f"{runs / wall:.0f} runs/s",
                    )
                )
                rows.append(
                    (
                        "RunWorkflow round trip (start to result)",
                        f"p50 {statistics.median(latencies):.1f} ms",
                        f"p99 {_pct(latencies, 0.99):.1f} ms",
                    )
                )
        finally:
            for p in procs:
                p.stop()
        rows += await _recovery(redis.url)
    return rows


async def _first(handle: longline.RunHandle, pred: object) -> longline.Event:
    async for event in handle.events():
        if pred(event):  # type: ignore[operator]
            return event
    raise RuntimeError("the run ended first")


def _restarted(event: longline.Event) -> bool:
    return event.type is longline.EventType.RUN_STARTED and event.attempt == 2


async def _recovery(redis_url: str, rounds: int = 3) -> list[tuple[str, str, str]]:
    """kill -9 -> RUN_STARTED of attempt 2, and SIGTERM drain deadline -> RUN_STARTED."""
    lease = ("--lease-timeout", "2", "--heartbeat-interval", "0.5")
    crash, handoff = [], []
    procs: list[Proc] = []
    try:
        cp, target = await start_control_plane(redis_url, *lease)
        procs.append(cp)
        async with longline.Client(target) as client:
            for i in range(rounds):
                a = await start_worker(redis_url, target, "--worker-id", f"a{i}", name=f"a{i}")
                procs.append(a)
                handle = await client.start("five_steps", {"delay": 0.5})
                await _first(handle, lambda e: e.type is longline.EventType.COMPONENT_STARTED)
                b = await start_worker(
                    redis_url,
                    target,
                    "--worker-id",
                    f"b{i}",
                    "--drain-timeout",
                    "0.5",
                    name=f"b{i}",
                )
                procs.append(b)
                killed = time.time()
                a.kill()
                started = await _first(handle, _restarted)
                assert started.time is not None
                crash.append(started.time.timestamp() - killed)
                await handle.result()

                handle = await client.start("five_steps", {"delay": 0.5})
                await _first(handle, lambda e: e.type is longline.EventType.COMPONENT_STARTED)
                holder = b
                c = await start_worker(
                    redis_url,
                    target,
                    "--worker-id",
                    f"c{i}",
                    "--drain-timeout",
                    "0.5",
                    name=f"c{i}",
                )
                procs.append(c)
                deadline = time.time() + 0.5
                holder.popen.send_signal(signal.SIGTERM)
                started = await _first(handle, _restarted)
                assert started.time is not None
                handoff.append(started.time.timestamp() - deadline)
                await handle.result()
                for p in (b, c):  # the next round starts with no worker
                    p.stop()
    finally:
        for p in procs:
            p.stop()
    return [
        (
            "recovery: kill -9 to attempt 2 started (lease 2 s, heartbeat 0.5 s)",
            f"p50 {statistics.median(crash):.2f} s",
            f"max {max(crash):.2f} s",
        ),
        (
            "drain hand-off: drain deadline to attempt 2 started",
            f"p50 {statistics.median(handoff) * 1000:.0f} ms",
            f"max {max(handoff) * 1000:.0f} ms",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    rows = asyncio.run(bench(args.runs))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'result':>12}  {'detail':>14}")
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>12}  {b:>14}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench.json"
    out.write_text(
        json.dumps([dict(zip(("measure", "time", "rate"), r, strict=True)) for r in rows], indent=2)
    )
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
