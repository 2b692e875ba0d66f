"""B1 and B2 for the peers, run with the peers' own Python (.venv/peers/bin/python):
`python -m tests.bench.peers TOOL MODE --redis URL ...` prints one JSON object.

Each tool runs the same no-op job through its own worker, started here as a subprocess
with the tool's defaults, and the client waits for each result as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _worker(tool: str, redis: str, tuned: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PEER_REDIS": redis, "PYTHONPATH": str(ROOT)}
    if tool == "arq":
        if tuned:
            env["ARQ_POLL_DELAY"] = "0.005"
        args = [str(BIN / "arq"), "tests.bench.peer_tasks.ArqSettings"]
    elif tool == "celery":
        args = [
            str(BIN / "celery"),
            "-A",
            "tests.bench.peer_tasks:celery_app",
            "worker",
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    else:
        args = [str(BIN / "rq"), "worker", "--url", redis + "/3", "-q"]
        if tuned:  # no fork per job
            args += ["--worker-class", "rq.worker.SimpleWorker"]
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# -- arq ---------------------------------------------------------------------
async def _arq(redis: str, jobs: int, clients: int, sequential: bool, tuned: bool) -> list[float]:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(redis + "/1"))
    poll = 0.005 if tuned else 0.5  # Job.result()'s default poll_delay is 0.5 s
    await (await pool.enqueue_job("arq_noop")).result(timeout=60, poll_delay=poll)  # warm-up
    latencies: list[float] = []

    async def one_client(n: int) -> None:
        enqueued = []
        for _ in range(n):
            started = time.perf_counter()
            job = await pool.enqueue_job("arq_noop")
            if sequential:
                await job.result(timeout=60, poll_delay=poll)
                latencies.append(time.perf_counter() - started)
            else:
                enqueued.append(job)
        await asyncio.gather(*(j.result(timeout=300, poll_delay=poll) for j in enqueued))

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(n) for n in _split(jobs, clients)))
    wall = time.perf_counter() - t0
    await pool.aclose()
    return latencies if sequential else [wall]


# -- Celery ------------------------------------------------------------------
def _celery(redis: str, jobs: int, clients: int, sequential: bool, tuned: bool) -> list[float]:
    os.environ["PEER_REDIS"] = redis
    from tests.bench.peer_tasks import celery_noop

    celery_noop.delay().get(timeout=60)  # warm-up
    latencies: list[float] = []

    def one_client(n: int) -> None:
        pending = []
        for _ in range(n):
            started = time.perf_counter()
            result = celery_noop.delay()
            if sequential:
                result.get(timeout=60)
                latencies.append(time.perf_counter() - started)
            else:
                pending.append(result)
        for result in pending:
            result.get(timeout=300)

    return _threads(one_client, jobs, clients, sequential, latencies)


# -- RQ ----------------------------------------------------------------------
def _rq(redis: str, jobs: int, clients: int, sequential: bool, tuned: bool) -> list[float]:
    from redis import Redis
    from rq import Queue

    from tests.bench.peer_tasks import rq_noop

    def queue() -> Queue:
        return Queue(connection=Redis.from_url(redis + "/3"))

    job = queue().enqueue(rq_noop)
    assert job.latest_result(timeout=60) is not None  # warm-up
    latencies: list[float] = []

    def one_client(n: int) -> None:
        q = queue()
        pending = []
        for _ in range(n):
            started = time.perf_counter()
            job = q.enqueue(rq_noop)
            if sequential:
                job.latest_result(timeout=60)  # blocks on the job's results stream
                latencies.append(time.perf_counter() - started)
            else:
                pending.append(job)
        for job in pending:
            job.latest_result(timeout=300)

    return _threads(one_client, jobs, clients, sequential, latencies)


def _threads(fn: Any, jobs: int, clients: int, sequential: bool, out: list[float]) -> list[float]:
    threads = [threading.Thread(target=fn, args=(n,)) for n in _split(jobs, clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return out if sequential else [wall]


def _split(jobs: int, clients: int) -> list[int]:
    return [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=["arq", "celery", "rq"])
    parser.add_argument("mode", choices=["throughput", "latency"])
    parser.add_argument("--redis", required=True, help="redis://host:port (no db)")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tuned", action="store_true")
    args = parser.parse_args()
    worker = _worker(args.tool, args.redis, args.tuned)
    try:
        sequential = args.mode == "latency"
        clients = 1 if sequential else args.clients
        if args.tool == "arq":
            values = asyncio.run(_arq(args.redis, args.jobs, clients, sequential, args.tuned))
        elif args.tool == "celery":
            values = _celery(args.redis, args.jobs, clients, sequential, args.tuned)
        else:
            values = _rq(args.redis, args.jobs, clients, sequential, args.tuned)
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
    if sequential:
        ms = sorted(v * 1000 for v in values)
        print(
            json.dumps(
                {
                    "p50_ms": statistics.median(ms),
                    "p99_ms": ms[int(0.99 * (len(ms) - 1))],
                    "n": len(ms),
                }
            )
        )
    else:
        print(json.dumps({"runs_per_s": args.jobs / values[0], "wall_s": values[0]}))


if __name__ == "__main__":
    main()
