"""CPU per run, by process, during B1: what each of the bench's clients, the control
plane(s), the worker and Redis spent over a B1 of `runs` no-op runs, divided by the runs.

    python -m tests.bench.cpu --runs 5000 [--workflow noop] [--processes 1]
    python -m tests.bench.cpu --runs 5000 --profile cp   # py-spy the control plane too
    python -m tests.bench.cpu --runs 5000 --profile cp --native   # with its C frames
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from dataclasses import dataclass

import psutil

import longline
from longline._embedded import EmbeddedRedis
from tests.bench.b1 import stack, throughput
from tests.procs import Proc


async def run_throughput(
    target: str, runs: int, clients: int = 8, workflow: str = "noop", callers: int = 0
) -> float:
    """runs/s of `client.run()` (RunWorkflow: start and wait for the result, as a job queue's
    enqueue-and-wait), `callers` at a time per client (0: every run at once)."""
    pool = [longline.Client(target) for _ in range(clients)]

    async def share(client: longline.Client, n: int) -> None:
        gate = asyncio.Semaphore(callers or n or 1)

        async def one(i: int) -> None:
            async with gate:
                await client.run(workflow, i)

        await asyncio.gather(*(one(i) for i in range(n)))

    try:
        shares = [runs // clients + (1 if i < runs % clients else 0) for i in range(clients)]
        t0 = time.perf_counter()
        await asyncio.gather(*(share(c, n) for c, n in zip(pool, shares, strict=True)))
        return runs / (time.perf_counter() - t0)
    finally:
        for c in pool:
            await c.aclose()


@dataclass
class CpuPerRun:
    rate: float
    ms: dict[str, float]  # process -> CPU ms per run

    @property
    def total(self) -> float:
        return sum(self.ms.values())


def _cpu(p: psutil.Process, children: bool = True) -> float:
    t = p.cpu_times()
    total = t.user + t.system
    for child in p.children(recursive=True) if children else []:
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


async def measure(
    redis_url: str,
    redis_pid: int,
    runs: int,
    workflow: str = "noop",
    extra_cp: tuple[str, ...] = (),
    profile: str = "",
    call: str = "start",
    native: bool = False,
) -> CpuPerRun:
    procs: list[Proc] = []
    try:
        target = await stack(redis_url, procs, *extra_cp)
        who = {
            "client": psutil.Process(os.getpid()),
            "control plane": psutil.Process(procs[0].popen.pid),
            "worker": psutil.Process(procs[1].popen.pid),
            "redis": psutil.Process(redis_pid),
        }
        spy = None
        if profile:
            pid = {"cp": procs[0].popen.pid, "worker": procs[1].popen.pid}.get(profile, os.getpid())
            spy = subprocess.Popen(
                [
                    os.path.join(os.path.dirname(os.sys.executable), "py-spy"),
                    "record",
                    "-p",
                    str(pid),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    f"/tmp/profile-{profile}.txt",
                    *(["--native"] if native else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1)
        before = {name: _cpu(p, name != "client") for name, p in who.items()}
        if call == "run":
            rate = await run_throughput(target, runs, workflow=workflow)
        else:
            rate = await throughput(target, runs, workflow=workflow)
        after = {name: _cpu(p, name != "client") for name, p in who.items()}
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        return CpuPerRun(rate, {n: (after[n] - before[n]) * 1000 / runs for n in who})
    finally:
        for p in procs:
            p.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--workflow", default="noop")
    parser.add_argument("--profile", default="", choices=["", "cp", "worker", "client"])
    parser.add_argument("--cp-arg", action="append", default=[])
    parser.add_argument("--call", default="start", choices=["start", "run"])
    parser.add_argument(
        "--native", action="store_true", help="with --profile: C frames too (py-spy --native)"
    )
    args = parser.parse_args()
    with EmbeddedRedis() as redis:
        assert redis._proc is not None
        out = await measure(
            redis.url,
            redis._proc.pid,
            args.runs,
            args.workflow,
            tuple(args.cp_arg),
            args.profile,
            args.call,
            args.native,
        )
    print(f"B1 {args.workflow} ({args.call}): {args.runs} runs, {out.rate:.0f} runs/s")
    for name, ms in out.ms.items():
        print(f"  {name:14s} {ms:.2f} ms CPU/run")
    print(f"  {'total':14s} {out.total:.2f} ms CPU/run")


if __name__ == "__main__":
    asyncio.run(main())
