"""`make bench`: longline side by side with arq, Celery, RQ, Temporal and DBOS.

longline, arq, Celery and RQ share one Redis on loopback; the durable-execution engines
Temporal and DBOS run B1, B2 and B4 on servers of their own (tests/bench/engines.py).

Prints one table, writes tests/bench/results/bench.json and bench.png. Timing goals live
here, never in `make test`. The control plane and workers are real subprocesses; the peers
run in a virtualenv of their own (.venv/peers, see peers-requirements.txt).

    python -m tests.bench [--quick] [--only B1,B2,...] [--no-peers] [--no-engines]
                          [--peers arq,celery,rq,temporal,dbos]

B10 measures B3's watchers and B5's one fast run again over the HTTP face's Server-Sent
Events; its rows note the gRPC figures beside them when B3 and B5 ran too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import redis as sync_redis

import longline
from longline._embedded import EmbeddedRedis
from longline._store import Store
from tests.bench import cpu
from tests.bench.b1 import BENCH_FLOWS, NO_LIMITS, stack, throughput
from tests.bench.fanout import onboard, ticks
from tests.bench.footprint import footprints
from tests.bench.sse import throughput as sse_throughput
from tests.bench.sse import watchers as sse_watchers
from tests.bench.waits import parked
from tests.cluster import RedisCluster
from tests.conftest import ROOT
from tests.procs import Proc, start_control_plane, start_worker

RESULTS = ROOT / "tests" / "bench" / "results"
PEERS_PYTHON = ROOT / ".venv" / "peers" / "bin" / "python"
QUEUES = ("arq", "celery", "rq")
ENGINES = ("temporal", "dbos")
# Temporal's tuned worker (tests/bench/engines.py, _temporal_options).
TEMPORAL_TUNED = "1,000 slots, 10,000 cached, autoscaling pollers, no sandbox"


@dataclass
class Row:
    bench: str
    system: str
    measure: str
    value: float
    unit: str
    goal: str = ""
    note: str = ""


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


# -- B1 ------------------------------------------------------------------------------
async def b1(
    redis_url: str,
    runs: int,
    peers: Collection[str],
    peer_runs: int,
    system: str = "longline",
    one_step: bool = False,
) -> list[Row]:
    """`peers`: which of arq, Celery and RQ to run beside longline; `one_step`: also
    longline's B1 with one durable step per run (beside Temporal and DBOS, see b1_engines)."""
    procs: list[Proc] = []
    rows: list[Row] = []
    try:
        target = await stack(redis_url, procs)
        rate = await throughput(target, runs)
        rows.append(
            Row(
                "B1",
                system,
                f"{runs} no-op runs, 8 clients",
                rate,
                "runs/s",
                ">= 1000 runs/s; >= 1.0x arq, >= 1.5x Celery",
            )
        )
        if one_step:
            async with longline.Client(target) as client:
                for i in range(20):  # warm-up
                    await client.run("one_step", i)
            rows.append(
                Row(
                    "B1",
                    system,
                    f"{runs} runs, 8 clients (one durable step)",
                    await throughput(target, runs, workflow="one_step"),
                    "runs/s",
                    note="each run one checkpointed no-op component",
                )
            )
            rows.append(
                Row(
                    "B1",
                    system,
                    f"{runs} runs, {CALLERS} callers (one durable step, callers)",
                    await _callers(target, runs, "one_step"),
                    "runs/s",
                    note="the shape of Temporal's and DBOS's rows; start, then events",
                )
            )
            rows.append(
                Row(
                    "B1",
                    system,
                    f"{runs} runs, {CALLERS} callers (one durable step, callers, client.run)",
                    await _callers(target, runs, "one_step", run=True),
                    "runs/s",
                    note="client.run: RunWorkflow, start and wait for the result in one call",
                )
            )
    finally:
        for p in procs:
            p.stop()
    if peers:
        for tool, tuned in (("arq", False), ("arq", True), ("celery", False), ("rq", False)):
            if tool not in peers:
                continue
            jobs = runs if tool != "rq" else min(runs, peer_runs)
            extra = ["--tuned"] if tuned else []
            out = _peer(redis_url, tool, "throughput", "--jobs", str(jobs), *extra)
            how = " (tuned: polling 5 ms)" if tuned else ""
            rows.append(
                Row(
                    "B1",
                    tool,
                    f"{jobs} no-op jobs, 8 clients{how}",
                    out["runs_per_s"],
                    "runs/s",
                    note=f"longline is {rate / out['runs_per_s']:.2f}x (start + events)",
                )
            )
    return rows


CALLERS = 64  # B1 of one durable step, beside Temporal and DBOS: 8 clients of 8 callers


async def _callers(
    target: str, runs: int, workflow: str, clients: int = 8, run: bool = False
) -> float:
    """runs/s with CALLERS callers over `clients` clients, each starting a run and awaiting
    its RUN_SUCCEEDED, then the next: the shape of the engines' B1 (b1_engines). With `run`,
    each call is client.run() (RunWorkflow), as Temporal's execute_workflow."""
    pool = [longline.Client(target) for _ in range(clients)]

    async def caller(client: longline.Client, n: int) -> None:
        for i in range(n):
            if run:
                await client.run(workflow, i)
                continue
            handle = await client.start(workflow, i)
            async for event in handle.events():
                if event.type is longline.EventType.RUN_SUCCEEDED:
                    break
            else:
                raise RuntimeError(f"run {handle.run_id} did not succeed")

    shares = [runs // CALLERS + (1 if i < runs % CALLERS else 0) for i in range(CALLERS)]
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(pool[k % clients], n) for k, n in enumerate(shares)))
        return runs / (time.perf_counter() - t0)
    finally:
        for c in pool:
            await c.aclose()


def _peer(redis_url: str, tool: str, mode: str, *extra: str) -> dict[str, Any]:
    base = redis_url.rsplit("/", 1)[0]
    done = subprocess.run(
        [str(PEERS_PYTHON), "-m", "tests.bench.peers", tool, mode, "--redis", base, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool} {mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def b1_cpu(redis_url: str, redis_pid: int, runs: int) -> list[Row]:
    """B1's no-op runs again, 8 clients, each shape of call (start then events; client.run)
    at one and two control-plane processes (--processes): runs/s, and the CPU each process
    spent per run (tests/bench/cpu.py: the bench's clients, the control plane with its
    replicas, the worker, Redis)."""
    rows = []
    for processes in (1, 2):
        for call, how in (("start", "start + events"), ("run", "client.run")):
            out = await cpu.measure(
                redis_url, redis_pid, runs, extra_cp=("--processes", str(processes)), call=call
            )
            where = f"{processes} control-plane process{'es' if processes > 1 else ''}"
            rows.append(
                Row(
                    "B1",
                    "longline",
                    f"{runs} no-op runs, 8 clients, {how}, {where}",
                    out.rate,
                    "runs/s",
                    ">= 1.0x arq tuned" if call == "run" and processes == 1 else "",
                )
            )
            breakdown = ", ".join(f"{name} {ms:.2f}" for name, ms in out.ms.items())
            rows.append(
                Row(
                    "B1",
                    "longline",
                    f"CPU per run, {how}, {where}",
                    out.total,
                    "ms",
                    "<= 2 ms" if processes == 1 else "",
                    note=f"by process (ms): {breakdown}",
                )
            )
    return rows


# -- B2 ------------------------------------------------------------------------------
async def b2(
    redis_url: str, runs: int, peers: Collection[str], system: str = "longline"
) -> list[Row]:
    procs: list[Proc] = []
    started_ms: list[float] = []
    status_ms: list[float] = []
    try:
        target = await stack(redis_url, procs)
        async with longline.Client(target) as client:
            for i in range(runs + 20):
                t0 = time.time()
                handle = await client.start("stamp", i)
                async for event in handle.events():
                    if event.type is longline.EventType.RUN_STARTED and i >= 20:
                        started_ms.append((time.time() - t0) * 1000)
                    elif event.type is longline.EventType.STATUS and i >= 20:
                        status_ms.append((time.time() - float(event.message)) * 1000)
    finally:
        for p in procs:
            p.stop()
    goal = "p50 <= 5 ms, p99 <= 20 ms"
    rows = [
        Row(
            "B2",
            system,
            "StartRun to RUN_STARTED seen, p50",
            statistics.median(started_ms),
            "ms",
            goal,
        ),
        Row(
            "B2",
            system,
            "StartRun to RUN_STARTED seen, p99",
            _pct(started_ms, 0.99),
            "ms",
            goal,
        ),
        Row(
            "B2",
            system,
            "ctx.status() to event at a StreamRun client, p50",
            statistics.median(status_ms),
            "ms",
            goal,
        ),
        Row(
            "B2",
            system,
            "ctx.status() to event at a StreamRun client, p99",
            _pct(status_ms, 0.99),
            "ms",
            goal,
        ),
    ]
    if peers:
        for tool, tuned, n in (
            ("arq", False, 40),
            ("arq", True, runs),
            ("celery", False, runs),
            ("rq", False, 100),
            ("rq", True, runs),
        ):
            if tool not in peers:
                continue
            args = ["--jobs", str(n)] + (["--tuned"] if tuned else [])
            out = _peer(redis_url, tool, "latency", *args)
            how = "tuned" if tuned else "defaults"
            for q in ("p50", "p99"):
                rows.append(
                    Row(
                        "B2",
                        tool,
                        f"enqueue to result ({how}, {out['n']} jobs), {q}",
                        out[f"{q}_ms"],
                        "ms",
                    )
                )
    return rows


# -- B3 ------------------------------------------------------------------------------
async def b3(redis_url: str, waiting: int, watchers: int) -> list[Row]:
    rows: list[Row] = []
    procs: list[Proc] = []
    try:
        target = await stack(redis_url, procs, slots=waiting + 10)
        worker = psutil.Process(procs[1].popen.pid)
        before = worker.memory_info().rss
        async with longline.Client(target) as client:
            handles = await asyncio.gather(
                *(client.start("wait", {"seconds": 120}) for _ in range(waiting))
            )

            async def all_running() -> bool:
                return await _running(redis_url) >= waiting

            await _until(all_running, 300)
            await asyncio.sleep(2)
            per_run = (worker.memory_info().rss - before) / waiting
            rows.append(
                Row(
                    "B3",
                    "longline",
                    f"worker memory per waiting run ({waiting} runs awaiting 120 s)",
                    per_run / 1024,
                    "KB",
                    "<= 20 KB",
                )
            )
            await asyncio.gather(*(h.cancel() for h in handles))
    finally:
        for p in procs:
            p.stop()
    rows += await _watchers(redis_url, watchers)
    return rows


async def _running(redis_url: str) -> int:
    """Runs RUNNING now (the scripts keep this count exact)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return (await Store(r).runs.stats()).by_status.get("RUNNING", 0)
    finally:
        await r.aclose()


async def _until(probe: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark setup took too long")
        await asyncio.sleep(0.5)


def _cp_connections(r: sync_redis.Redis) -> int:
    """The control planes' connections to Redis (each names itself longline-cp-...)."""
    return sum(1 for c in r.client_list() if c.get("name", "").startswith("longline-cp-"))


async def _watchers(redis_url: str, n: int) -> list[Row]:
    """n StreamRun watchers of n runs that each emit one event a second."""
    procs: list[Proc] = []
    try:
        target = await stack(redis_url, procs, slots=n + 10)
        cp = psutil.Process(procs[0].popen.pid)
        r = sync_redis.Redis.from_url(redis_url)
        idle_connections = _cp_connections(r)
        latencies: list[float] = []
        ticks = 20
        window: list[float] = []  # [start, end] of the steady state, wall clock
        async with longline.Client(target) as client:
            handles = await asyncio.gather(
                *(client.start("ticker", {"ticks": ticks}) for _ in range(n))
            )

            async def watch(h: longline.RunHandle) -> None:
                async for e in h.events():
                    if e.type is longline.EventType.STATUS:
                        emitted = float(e.message)
                        # Live events of the steady state only, not the catch-up of a watcher
                        # that joined after the event was written.
                        if len(window) == 2 and window[0] <= emitted <= window[1]:
                            latencies.append((time.time() - emitted) * 1000)

            tasks = [asyncio.create_task(watch(h)) for h in handles]
            await asyncio.sleep(ticks / 2)
            window[:] = [time.time(), time.time() + 5]
            cpu0, t0 = cp.cpu_times(), time.monotonic()
            busy_connections = _cp_connections(r)
            await asyncio.sleep(5)
            cpu1, t1 = cp.cpu_times(), time.monotonic()
            await asyncio.gather(*tasks)
        cpu = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0) * 100
        return [
            Row(
                "B3",
                "longline",
                f"control plane Redis connections with {n} watchers",
                busy_connections,
                "connections",
                "does not grow with watchers",
                note=f"{idle_connections} idle; at most the pool (32) + 2 readers",
            ),
            Row(
                "B3",
                "longline",
                f"control plane CPU, {n} watchers of {n} runs at 1 event/s",
                cpu,
                "% of a core",
            ),
            Row(
                "B3",
                "longline",
                f"delivery latency p99, {n} watchers",
                _pct(latencies, 0.99),
                "ms",
                "<= 50 ms",
                note=f"p50 {statistics.median(latencies):.1f} ms, {len(latencies)} events",
            ),
        ]
    finally:
        for p in procs:
            p.stop()


# -- B4 ------------------------------------------------------------------------------
async def b4(redis_url: str, runs: int) -> list[Row]:
    procs: list[Proc] = []
    lease = ("--lease-timeout", "2", "--heartbeat-interval", "0.5")
    os.environ["LONGLINE_TEST_REDIS"] = redis_url
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        cp, target = await start_control_plane(redis_url, *lease, *NO_LIMITS, name="b4-cp")
        procs.append(cp)
        victim = await start_worker(
            redis_url,
            target,
            "--slots",
            str(runs),
            module=BENCH_FLOWS,
            workflow="five_steps",
            name="victim",
        )
        procs.append(victim)
        async with longline.Client(target) as client:
            handles = await asyncio.gather(
                *(client.start("five_steps", {"delay": 1.0}) for _ in range(runs))
            )

            async def all_on_step_two() -> bool:
                counts = [await r.hget(f"test:steps:{h.run_id}", "2") for h in handles]
                return all(counts)

            await _until(all_on_step_two, 60)
            procs.append(
                await start_worker(
                    redis_url,
                    target,
                    "--slots",
                    str(runs),
                    module=BENCH_FLOWS,
                    workflow="five_steps",
                    name="rescuer",
                )
            )
            killed = time.time()
            victim.kill()
            restarts = []
            for h in handles:
                async for e in h.events():
                    if e.type is longline.EventType.RUN_STARTED and e.attempt == 2:
                        assert e.time is not None
                        restarts.append(e.time.timestamp() - killed)
                        break
            await asyncio.gather(*(h.result() for h in handles))
            again = 0
            for h in handles:
                counts = await r.hgetall(f"test:steps:{h.run_id}")
                again += sum(int(v) - 1 for v in counts.values())
        return [
            Row(
                "B4",
                "longline",
                f"kill -9 with {runs} runs in flight to all running again (lease 2 s)",
                max(restarts),
                "s",
                "<= lease + 1 s = 3 s",
                note=f"p50 {statistics.median(restarts):.2f} s",
            ),
            Row(
                "B4",
                "longline",
                "steps executed again after the kill",
                again,
                "steps",
                note=f"of {runs * 5}; only steps in flight at the kill",
            ),
        ]
    finally:
        await r.aclose()
        for p in procs:
            p.stop()


# -- Temporal and DBOS: B1, B2, B4 (tests/bench/engines.py) ---------------------------
def _engine(*args: str) -> dict[str, Any]:
    """`python -m tests.bench.engines ARGS` with the peers' Python: its JSON, or
    {"skipped": why} when the engine could not run (the bench goes on without it)."""
    try:
        done = subprocess.run(
            [str(PEERS_PYTHON), "-m", "tests.bench.engines", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": "timed out after 1800 s"}
    if done.returncode != 0:
        print(f"engines {' '.join(args)} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"failed ({last[:160]})"}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _skipped(bench: str, system: str, measure: str, out: dict[str, Any]) -> Row | None:
    if "skipped" not in out:
        return None
    return Row(bench, system, measure, math.nan, "", note=f"not measured: {out['skipped']}")


def _find(rows: list[Row], bench: str, start: str, end: str = "") -> Row | None:
    """longline's row of `bench` whose measure starts with `start` and ends with `end`."""
    for r in rows:
        if r.system == "longline" and r.bench == bench:
            if r.measure.startswith(start) and r.measure.endswith(end):
                return r
    return None


def b1_engines(
    runs: int,
    engines: Collection[str],
    longline_rate: float | None,
    longline_run_rate: float | None = None,
) -> list[Row]:
    """Runs of one workflow with one durable no-op step, by CALLERS callers that each start a
    run and await its result, then the next, from first start to last result; beside
    longline's "(one durable step, callers)" row. (All in flight at once, as longline's B1
    has them, the Temporal dev server refuses: "namespace concurrent poller limit exceeded"
    past about a thousand awaited results.)"""
    cases: list[tuple[str, list[str], str]] = []
    if "temporal" in engines:
        what = f"1 workflow + 1 activity, {CALLERS} callers on 8 clients, dev server, 1 worker"
        cases += [
            ("temporal", ["temporal", "b1"], f"{what} (defaults)"),
            ("temporal", ["temporal", "b1", "--tuned"], f"{what} (tuned: {TEMPORAL_TUNED})"),
        ]
    if "dbos" in engines:
        inproc = f"1 workflow + 1 @DBOS.step, {CALLERS} callers in the DBOS process"
        queue = f"1 workflow + 1 @DBOS.step, {CALLERS} callers on 8 DBOSClients, 1 worker process"
        cases += [
            ("dbos", ["dbos", "b1", "--shape", "inproc"], f"{inproc} (in-process, SQLite)"),
            (
                "dbos",
                ["dbos", "b1", "--shape", "inproc", "--db", "postgres"],
                f"{inproc} (in-process, PostgreSQL 15)",
            ),
            (
                "dbos",
                ["dbos", "b1", "--shape", "queue", "--poll", "1"],
                f"{queue} (queue, defaults: SQLite, polling 1 s)",
            ),
            (
                "dbos",
                ["dbos", "b1", "--shape", "queue", "--db", "postgres", "--poll", "0.01"],
                f"{queue} (queue, tuned: PostgreSQL 15, polling 10 ms)",
            ),
        ]
    rows = []
    for system, args, what in cases:
        measure = f"{runs} runs of {what}"
        out = _engine(*args, "--runs", str(runs), "--callers", str(CALLERS))
        if skipped := _skipped("B1", system, measure, out):
            rows.append(skipped)
            continue
        note = ""
        if longline_rate:
            note = f"longline (one step) is {longline_rate / out['runs_per_s']:.2f}x"
        if longline_run_rate:
            note += f", {longline_run_rate / out['runs_per_s']:.2f}x with client.run"
        rows.append(Row("B1", system, measure, out["runs_per_s"], "runs/s", note=note))
    return rows


def b2_engines(runs: int, engines: Collection[str], longline_p50: float | None) -> list[Row]:
    """The nearest each offers to longline's "start to first status seen": a run with no
    step, started and its result awaited, one at a time (neither streams a status)."""
    cases: list[tuple[str, list[str], str]] = []
    if "temporal" in engines:
        cases.append(
            (
                "temporal",
                ["temporal", "b2", "--runs", str(runs)],
                "start_workflow to result, workflow with no activity, 1 worker (defaults)",
            )
        )
    if "dbos" in engines:
        inproc = "start_workflow_async to get_result, workflow with no step"
        queue = "DBOSClient.enqueue to get_result, workflow with no step, 1 worker process"
        few = str(max(10, runs // 25))  # a second or two each at the default polling
        cases += [
            ("dbos", ["dbos", "b2", "--runs", str(runs)], f"{inproc} (in-process, SQLite)"),
            (
                "dbos",
                ["dbos", "b2", "--runs", str(runs), "--db", "postgres"],
                f"{inproc} (in-process, PostgreSQL 15)",
            ),
            (
                "dbos",
                ["dbos", "b2", "--shape", "queue", "--runs", few, "--warmup", "2"],
                f"{queue} (queue, defaults: SQLite, polling 1 s)",
            ),
            (
                "dbos",
                ["dbos", "b2", "--shape", "queue", "--runs", str(runs), "--db", "postgres"]
                + ["--poll", "0.01"],
                f"{queue} (queue, tuned: PostgreSQL 15, polling 10 ms)",
            ),
        ]
    rows = []
    for system, args, what in cases:
        out = _engine(*args)
        if skipped := _skipped("B2", system, f"{what}, p50", out):
            rows.append(skipped)
            continue
        for q in ("p50", "p99"):
            note = f"{out['n']} runs"
            if longline_p50 is not None and q == "p50":
                note += f"; longline StartRun to RUN_STARTED p50 {longline_p50:.1f} ms"
            rows.append(Row("B2", system, f"{what}, {q}", out[f"{q}_ms"], "ms", note=note))
    return rows


def b4_engines(runs: int, engines: Collection[str], longline_s: float | None) -> list[Row]:
    """kill -9 of the worker once all `runs` five-step runs (1 s steps) are on step 2: the
    time from the kill to each step that was in flight on it running again (max; p50 in
    the note), as longline's B4 measures it to RUN_STARTED of the next attempt."""
    cases: list[tuple[str, list[str], str]] = []
    kill = f"kill -9 with {runs} runs in flight to each interrupted step running again"
    if "temporal" in engines:
        cases += [
            (
                "temporal",
                ["temporal", "b4"],
                f"{kill}, 2nd worker up (defaults: start_to_close 10 s, no heartbeat)",
            ),
            (
                "temporal",
                ["temporal", "b4", "--heartbeat", "2"],
                f"{kill}, 2nd worker up (tuned: heartbeat timeout 2 s)",
            ),
        ]
    if "dbos" in engines:
        restart = f"{kill}, worker restarted with its executor id"
        cases += [
            ("dbos", ["dbos", "b4"], f"{restart} (SQLite)"),
            ("dbos", ["dbos", "b4", "--db", "postgres"], f"{restart} (PostgreSQL 15)"),
        ]
    rows = []
    for system, args, measure in cases:
        out = _engine(*args, "--runs", str(runs))
        if skipped := _skipped("B4", system, measure, out):
            rows.append(skipped)
            continue
        note = (
            f"p50 {out['p50_s']:.2f} s; {out['again']} of {out['steps']} steps ran again; "
            f"all done {out['all_done_s']:.1f} s after the kill"
        )
        if system == "temporal":
            note += "; default retry: 1 s backoff after the timeout"
        else:
            note += (
                f"; new process up {out['rescuer_start_s']:.2f} s after the kill; recovery "
                "on another live process needs DBOS Conductor (hosted), not run here"
            )
        if longline_s is not None:
            note += f"; longline {longline_s:.2f} s"
        rows.append(Row("B4", system, measure, out["max_s"], "s", note=note))
    return rows


# -- B5 ------------------------------------------------------------------------------
async def b5(redis_url: str, chunks: int) -> list[Row]:
    procs: list[Proc] = []
    try:
        target = await stack(redis_url, procs)
        async with longline.Client(target) as client:
            t0 = time.perf_counter()
            handle = await client.start("firehose", {"chunks": chunks})
            text = []
            async for e in handle.events():
                if e.type is longline.EventType.OUTPUT:
                    text.append(e.message)
            wall = time.perf_counter() - t0
        received = "".join(text).count("\n")
        assert received == chunks, f"{received} of {chunks} chunks arrived"
        return [
            Row(
                "B5",
                "longline",
                f"output chunks/s, one run to one watcher ({chunks} chunks)",
                chunks / wall,
                "chunks/s",
                ">= 20000 chunks/s",
            )
        ]
    finally:
        for p in procs:
            p.stop()


# -- B6 ------------------------------------------------------------------------------
async def b6(redis_url: str, runs: int, blog_posts: int) -> list[Row]:
    rows = []
    for f in await footprints(redis_url, runs, blog_posts):
        note = f"{f.events:.0f} events; a million: {f.keys_bytes * 1e6 / 2**30:,.1f} GiB"
        rows.append(
            Row(
                "B6",
                "longline",
                f"Redis bytes kept by a finished {f.workflow} run",
                f.keys_bytes,
                "B",
                "",
                note,
            )
        )
        rows.append(
            Row("B6", "longline", f"used_memory growth per {f.workflow} run", f.growth_bytes, "B")
        )
    return rows


# -- B7 ------------------------------------------------------------------------------
async def b7(redis_url: str, runs: int) -> list[Row]:
    f = await parked(redis_url, runs)
    once = f"{f['succeeded']} of {runs} succeeded; woken other than once: {f['not_once']}"
    return [
        Row(
            "B7",
            "longline",
            f"wake-up delay p50, {runs} runs sleeping until one instant, 2 replicas",
            f["wake_p50_ms"],
            "ms",
            note=once,
        ),
        Row(
            "B7",
            "longline",
            "wake-up delay p99 (instant to RUN_QUEUED of the next attempt)",
            f["wake_p99_ms"],
            "ms",
            note=f"max {f['wake_max_ms']:.0f} ms",
        ),
        Row(
            "B7",
            "longline",
            "instant to RUN_STARTED of the next attempt, p99",
            f["started_p99_ms"],
            "ms",
            note=f"p50 {f['started_p50_ms']:.0f} ms",
        ),
        Row(
            "B7",
            "longline",
            "Redis bytes per parked run (its keys, and its timer)",
            f["bytes_per_parked_run"],
            "B",
            "a few KB",
            note=f"used_memory growth per run {f['used_memory_per_parked_run']:,.0f} B",
        ),
        Row(
            "B7",
            "longline",
            f"worker RSS growth with {f['parked']} runs parked",
            f["worker_rss_growth_mb"],
            "MiB",
            "none per parked run",
        ),
    ]


# -- B8, B9 --------------------------------------------------------------------------
async def b8(redis_url: str, seconds: int) -> list[Row]:
    t = await ticks(redis_url, seconds)
    note = (
        f"{t['distinct']} runs for {t['ticks']} ticks; missed {t['missed']}; "
        f"max {t['max_ms']:.0f} ms"
    )
    return [
        Row(
            "B8",
            "longline",
            "schedule tick to RUN_STARTED p50, every second, 2 replicas",
            t["p50_ms"],
            "ms",
            note=note,
        ),
        Row("B8", "longline", "schedule tick to RUN_STARTED p99", t["p99_ms"], "ms"),
    ]


async def b9(redis_url: str, pages: int) -> list[Row]:
    one = await onboard(redis_url, pages, 1)
    two = await onboard(redis_url, pages, 2)
    ideal = pages * 0.5 / 8
    return [
        Row(
            "B9",
            "longline",
            f"onboard_site, {pages} child runs, 1 worker of 8 slots",
            one,
            "s",
            f"{ideal:.1f} s (0.5 s calls, 8 at once)",
        ),
        Row(
            "B9",
            "longline",
            f"onboard_site, {pages} child runs, 2 workers of 8 slots",
            two,
            "s",
            f"{ideal / 2:.1f} s",
            note=f"{one / two:.2f}x the speed of one worker",
        ),
    ]


# -- B10 -----------------------------------------------------------------------------
async def b10(redis_url: str, watchers: int, chunks: int) -> list[Row]:
    """B3's watchers and B5's firehose over HTTP/SSE; measures named as theirs plus "SSE"."""
    w = await sse_watchers(redis_url, watchers, _cp_connections)
    n = w.n
    rows = [
        Row(
            "B10",
            "longline",
            f"control plane Redis connections with {n} SSE watchers",
            w.busy_connections,
            "connections",
            "does not grow with watchers",
            note=f"{w.idle_connections} idle; {w.unwatched_connections} with the runs, unwatched",
        ),
        Row(
            "B10",
            "longline",
            f"control plane CPU, {n} SSE watchers of {n} runs at 1 event/s",
            w.cpu_percent,
            "% of a core",
        ),
        Row(
            "B10",
            "longline",
            f"delivery latency p50, {n} SSE watchers",
            w.p50_ms,
            "ms",
            note=(
                f"{w.events} events; {n} runs started over HTTP in {w.start_s:.1f} s, "
                f"their watchers connected in {w.ramp_s:.1f} s"
            ),
        ),
        Row(
            "B10",
            "longline",
            f"delivery latency p99, {n} SSE watchers",
            w.p99_ms,
            "ms",
            "<= 50 ms",
            note=(
                f"from Redis storing it: p50 {w.stored_p50_ms:.1f} ms, p99 "
                f"{w.stored_p99_ms:.0f} ms; watchers' process {w.client_cpu_percent:.0f}% of a "
                f"core; {w.ended} of {n} streams ended with the terminal event"
            ),
        ),
    ]
    rate = await sse_throughput(redis_url, chunks)
    rows.append(
        Row(
            "B10",
            "longline",
            f"output chunks/s, one run to one SSE watcher ({chunks} chunks)",
            rate,
            "chunks/s",
            ">= 20000 chunks/s",
        )
    )
    return rows


def _beside(rows: list[Row]) -> None:
    """Note on each B10 (SSE) row the gRPC figure of the same measure (B3, B5)."""
    grpc = {r.measure: r for r in rows if r.bench in ("B3", "B5")}
    for r in rows:
        if r.bench != "B10":
            continue
        twin = grpc.get(r.measure.replace(" SSE", ""))
        if twin is None and " p50," in r.measure:
            # B3 gives its p50 in the note of its p99 row.
            p99 = grpc.get(r.measure.replace(" SSE", "").replace(" p50,", " p99,"))
            if p99 is not None:
                r.note = f"gRPC (B3): {p99.note.split(',')[0]}; {r.note}"
            continue
        if twin is not None:
            value = f"{twin.value:,.1f}" if twin.value < 100 else f"{twin.value:,.0f}"
            r.note = f"gRPC ({twin.bench}): {value} {twin.unit}; {r.note}".rstrip("; ")


# -- the table, the JSON and the chart -------------------------------------------------
def _table(rows: list[Row]) -> str:
    width = max(len(f"{r.bench} {r.system}: {r.measure}") for r in rows)
    lines = [f"{'measure':<{width}}  {'value':>12}  {'goal':<38} note"]
    for r in rows:
        name = f"{r.bench} {r.system}: {r.measure}"
        value = f"{r.value:,.1f} {r.unit}" if r.value < 100 else f"{r.value:,.0f} {r.unit}"
        if math.isnan(r.value):
            value = "n/a"
        lines.append(f"{name:<{width}}  {value:>12}  {r.goal:<38} {r.note}")
    return "\n".join(lines)


def _columns(rows: list[Row]) -> str:
    """B1 and B2 of longline side by side: one Redis, and the cluster of 3 masters."""
    cluster = {(r.bench, r.measure): r for r in rows if r.system == "longline, cluster of 3"}
    single = [r for r in rows if r.system == "longline" and (r.bench, r.measure) in cluster]
    if not single:
        return ""
    width = max(len(f"{r.bench} {r.measure}") for r in single)
    lines = [f"{'longline':<{width}}  {'one Redis':>12}  {'cluster of 3':>12}"]
    for r in single:
        c = cluster[(r.bench, r.measure)]
        lines.append(
            f"{r.bench + ' ' + r.measure:<{width}}  {r.value:>9,.1f} {r.unit:<2}"
            f"  {c.value:>9,.1f} {c.unit}"
        )
    return "\n".join(lines)


def _tag(r: Row) -> str:
    """What tells apart rows of one system in the chart: a measure's last parenthesis (up
    to a colon), as in "(queue, tuned: PostgreSQL 15, ...)" -> "queue, tuned"."""
    if ")" not in r.measure:
        return r.system
    tag = r.measure[r.measure.rindex("(") + 1 : r.measure.rindex(")")]
    return f"{r.system}\n{tag.split(':')[0]}"


def _short(measure: str) -> str:
    if "RUN_STARTED" in measure:
        return "start to RUN_STARTED"
    if "ctx.status" in measure:
        return "status to watcher"
    return "tuned" if "tuned" in measure else "defaults"


def _chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    b1 = [r for r in rows if r.bench == "B1" and not math.isnan(r.value)]
    if b1:
        axes[0].bar(
            [_tag(r) for r in b1],
            [r.value for r in b1],
            color=["#2b6cb0" if r.system.startswith("longline") else "#a0aec0" for r in b1],
        )
        axes[0].tick_params(axis="x", labelsize=6, labelrotation=90)
        axes[0].set_title("B1 throughput: no-op runs/s (higher is better)")
        axes[0].set_ylabel("runs/s")
    b2 = [
        r for r in rows if r.bench == "B2" and r.measure.endswith("p50") and not math.isnan(r.value)
    ]
    if b2:
        labels = [
            _tag(r) if r.system in ENGINES else f"{r.system}\n{_short(r.measure)}" for r in b2
        ]
        axes[1].barh(labels, [r.value for r in b2], color="#2b6cb0")
        axes[1].set_xscale("log")
        axes[1].set_title("B2 latency p50, ms (log scale, lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--only", default="B1,B2,B3,B4,B5,B6,B7,B8,B9,B10")
    parser.add_argument("--no-peers", action="store_true", help="longline alone")
    parser.add_argument(
        "--peers",
        default=",".join(QUEUES + ENGINES),
        help="which peers to run beside longline (default: all of them)",
    )
    parser.add_argument(
        "--no-engines", action="store_true", help="leave out Temporal and DBOS (B1, B2, B4)"
    )
    parser.add_argument(
        "--no-cluster", action="store_true", help="leave out the Redis Cluster column (B1, B2)"
    )
    args = parser.parse_args()
    only = set(args.only.upper().split(","))
    chosen = set() if args.no_peers else set(args.peers.lower().split(",")) - {""}
    if unknown := chosen - set(QUEUES + ENGINES):
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    if args.no_engines:
        chosen -= set(ENGINES)
    peers = chosen & set(QUEUES)
    engines = chosen & set(ENGINES)
    if chosen and not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing: `make bench` creates it (or pass --no-peers)")
    q = args.quick
    rows: list[Row] = []

    async def run_all() -> None:
        with EmbeddedRedis() as redis:
            url = redis.url
            if "B1" in only:
                runs = 1000 if q else 5000
                rows.extend(await b1(url, runs, peers, 200 if q else 500, one_step=True))
                if engines:
                    one = _find(rows, "B1", "", "(one durable step, callers)")
                    run = _find(rows, "B1", "", "(one durable step, callers, client.run)")
                    rows.extend(
                        b1_engines(
                            300 if q else runs,
                            engines,
                            one.value if one else None,
                            run.value if run else None,
                        )
                    )
                assert redis._proc is not None
                rows.extend(await b1_cpu(url, redis._proc.pid, 2000 if q else 5000))
            if "B2" in only:
                rows.extend(await b2(url, 100 if q else 500, peers))
                if engines:
                    p50 = _find(rows, "B2", "StartRun to RUN_STARTED", "p50")
                    rows.extend(b2_engines(100 if q else 300, engines, p50.value if p50 else None))
            if "B3" in only:
                rows.extend(await b3(url, 1000 if q else 10_000, 200 if q else 2000))
            if "B4" in only:
                rows.extend(await b4(url, 100))
                if engines:
                    kill = _find(rows, "B4", "kill -9")
                    rows.extend(b4_engines(100, engines, kill.value if kill else None))
            if "B5" in only:
                rows.extend(await b5(url, 20_000 if q else 100_000))
            if "B6" in only:
                rows.extend(await b6(url, 200 if q else 1000, 10 if q else 50))
            if "B10" in only:
                rows.extend(await b10(url, 200 if q else 2000, 20_000 if q else 100_000))
        if "B7" in only:
            with EmbeddedRedis() as redis:  # a Redis of its own: its memory is measured
                rows.extend(await b7(redis.url, 1000 if q else 10_000))
        if only & {"B8", "B9"}:
            with EmbeddedRedis() as redis:
                if "B8" in only:
                    rows.extend(await b8(redis.url, 10 if q else 30))
                if "B9" in only:
                    rows.extend(await b9(redis.url, 40 if q else 200))
        if only & {"B1", "B2"} and not args.no_cluster:
            # The cluster column: the same B1 and B2 on a local Redis Cluster of 3 masters
            # (64 partitions), beside the single-Redis figures.
            with RedisCluster() as cluster:
                system = "longline, cluster of 3"
                if "B1" in only:
                    cluster.flush()
                    rows.extend(await b1(cluster.longline_url, 1000 if q else 5000, (), 0, system))
                if "B2" in only:
                    cluster.flush()
                    rows.extend(await b2(cluster.longline_url, 100 if q else 500, (), system))

    asyncio.run(run_all())
    _beside(rows)
    print()
    print(_table(rows))
    if columns := _columns(rows):
        print()
        print(columns)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total // 2**30} GiB, Python {platform.python_version()}"
        ),
        "rows": [asdict(r) for r in rows],
    }
    (RESULTS / "bench.json").write_text(json.dumps(meta, indent=2))
    _chart(rows, RESULTS / "bench.png")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}/bench.json and bench.png ({meta['machine']})")


if __name__ == "__main__":
    main()
