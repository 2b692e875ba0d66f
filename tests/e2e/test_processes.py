"""`longline control-plane --processes N`: replicas in processes of their own sharing the
ports, started again when one dies, stopped together, and never outliving their supervisor."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import psutil
import pytest

import longline
from longline._embedded import free_port
from tests.conftest import eventually
from tests.procs import Proc, spawn, start_http_control_plane, start_worker, wait_serving


def _replicas(proc: Proc) -> list[psutil.Process]:
    """The supervisor's replica processes (multiprocessing's own helper is not one)."""
    children = psutil.Process(proc.popen.pid).children()
    return [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]


@pytest.mark.single_redis  # processes and signals: the topology of Redis changes nothing
async def test_two_processes_share_the_ports_survive_a_kill_and_stop_together(
    redis_url: str, procs: list[Proc]
) -> None:
    port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    cp = await start_http_control_plane(redis_url, port, http_port, "--processes", "2")
    procs.append(cp)
    first = await eventually(lambda: _two(cp, port), what="two replicas")
    procs.append(await start_worker(redis_url, target, "--slots", "8"))

    async def runs_succeed() -> None:
        # A connection each (gRPC channels in one process share theirs): the kernel spreads
        # them over both replicas (each takes some of 24, but with odds of 2 in 2**24), and
        # each run is started on one and dispatched by the one holding the worker's stream.
        sessions = [aiohttp.ClientSession() for _ in range(24)]
        try:

            async def one(i: int, http: aiohttp.ClientSession) -> object:
                url = f"http://127.0.0.1:{http_port}/v1/workflows/echo/runs?wait=30"
                async with http.post(url, json={"n": i}) as r:
                    assert r.status == 200, await r.text()
                    return (await r.json())["run"]["resultJson"]

            results = await asyncio.gather(*(one(i, h) for i, h in enumerate(sessions)))
            assert [json.loads(str(r)) for r in results] == [{"n": i} for i in range(24)]
            serving = [
                p
                for p in _replicas(cp)
                if any(
                    c.laddr.port == http_port and c.status == psutil.CONN_ESTABLISHED
                    for c in p.net_connections("tcp")
                )
            ]
            assert len(serving) == 2, "one replica took every connection"
        finally:
            for h in sessions:
                await h.close()
        async with longline.Client(target) as client:  # and over gRPC
            assert await client.run("echo", {"n": -1}) == {"n": -1}

    await runs_succeed()

    # kill -9 one replica: the supervisor starts it again, and runs still succeed.
    first[0].kill()
    again = await eventually(
        lambda: _two(cp, port, besides=first[0].pid), timeout=30, what="the replica started again"
    )
    assert first[0].pid not in {p.pid for p in again}
    await wait_serving(target, cp)
    await runs_succeed()
    assert "replica 0 exited" in cp.output() or "replica 1 exited" in cp.output()

    # SIGTERM to the supervisor: every replica stops, and it exits 0.
    cp.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(cp.popen.wait, 30) == 0, cp.output()
    for p in again:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE


@pytest.mark.single_redis
async def test_replicas_do_not_outlive_a_killed_supervisor(
    redis_url: str, procs: list[Proc]
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    cp = spawn("cp", "control-plane", "--listen", target, "--redis", redis_url, "--processes", "2")
    procs.append(cp)
    await wait_serving(target, cp)
    replicas = await eventually(lambda: _two(cp, port), what="two replicas")
    cp.kill()

    async def all_gone() -> bool:
        return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in replicas)

    await eventually(all_gone, timeout=30, what="the replicas to stop with their supervisor")


async def test_processes_need_a_fixed_free_port(redis_url: str) -> None:
    busy = spawn(
        "cp", "control-plane", "--listen", "127.0.0.1:0", "--redis", redis_url, "--processes", "2"
    )
    assert await asyncio.to_thread(busy.popen.wait, 30) != 0
    assert "needs a fixed port for --listen" in busy.output()


async def _two(cp: Proc, port: int, besides: int | None = None) -> list[psutil.Process]:
    """Both replicas, once each listens on the port; [] until then."""
    try:
        replicas = [p for p in _replicas(cp) if p.status() != psutil.STATUS_ZOMBIE]
        if len(replicas) != 2 or (besides is not None and besides in {p.pid for p in replicas}):
            return []
        for p in replicas:
            connections = p.net_connections("tcp")
            if not any(
                c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in connections
            ):
                return []
    except psutil.Error:  # one ended meanwhile
        return []
    return replicas
