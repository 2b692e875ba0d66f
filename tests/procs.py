"""Start the planes as real subprocesses, wait for their health, and kill them for real."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import longline
from longline._embedded import free_port
from tests.conftest import FLOWS, ROOT, eventually


@dataclass
class Proc:
    """A child process of the test, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def spawn(name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
    """Run `python -m longline._cli ARGS` with output to a log file."""
    log = Path(tempfile.mkstemp(prefix=f"longline-{name}-", suffix=".log")[1])
    # Test planes run without tokens unless a test says otherwise (LONGLINE_INSECURE_NO_AUTH=0).
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LONGLINE_INSECURE_NO_AUTH": "1",
        **(env or {}),
    }
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(
            [sys.executable, "-m", "longline._cli", "--log-level", "INFO", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=full_env,
        )
    return Proc(name, popen, log)


async def wait_serving(target: str, proc: Proc, timeout: float = 20) -> None:
    """Wait until the standard health service at target says SERVING."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited early:\n{proc.output()}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{proc.name} not serving after {timeout}s:\n{proc.output()}")


async def start_control_plane(
    redis_url: str, *extra: str, name: str = "cp", env: dict[str, str] | None = None
) -> tuple[Proc, str]:
    """A control-plane replica on a free port; (process, target)."""
    target = f"127.0.0.1:{free_port()}"
    proc = spawn(name, "control-plane", "--listen", target, "--redis", redis_url, *extra, env=env)
    await wait_serving(target, proc)
    return proc, target


async def start_http_control_plane(
    redis_url: str,
    grpc_port: int,
    http_port: int,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Proc:
    """A control-plane replica serving gRPC and HTTP on the ports given (a test that starts
    it again on the same address picks them)."""
    target = f"127.0.0.1:{grpc_port}"
    proc = spawn(
        "cp",
        "control-plane",
        "--listen",
        target,
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--redis",
        redis_url,
        *extra,
        env=env,
    )
    await wait_serving(target, proc)
    return proc


# The single Redis the test flows count their steps in when longline runs on a cluster
# (set by the redis_url fixture).
COUNTERS = ""


def counters_url(redis_url: str) -> str:
    """Where a worker's test flows count their steps: longline's own Redis, but for a
    cluster, whose client the flows do not use: then the session's single server."""
    return COUNTERS if redis_url.startswith("redis+cluster://") and COUNTERS else redis_url


async def start_worker(
    redis_url: str,
    target: str,
    *extra: str,
    module: str = str(FLOWS),
    workflow: str = "echo",
    name: str = "worker",
    env: dict[str, str] | None = None,
    client_token: str = "",
) -> Proc:
    """A worker serving `module`; returns once the control plane counts one more worker."""
    async with longline.Client(target.split(",")[0], token=client_token) as client:
        before = {w.name: w.workers for w in await client.list_workflows()}.get(workflow, 0)
        proc = spawn(
            name,
            "worker",
            module,
            "--control-plane",
            target,
            "--redis",
            redis_url,
            *extra,
            env={"LONGLINE_TEST_REDIS": counters_url(redis_url), **(env or {})},
        )

        async def counted() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{name} exited early:\n{proc.output()}")
            now = {w.name: w.workers for w in await client.list_workflows()}
            # Its own stream is open (the count alone can stay level while another worker's
            # presence runs out: a stopped or killed one).
            connected = "connected to control plane replica" in proc.output()
            return now.get(workflow, 0) > before or (connected and now.get(workflow, 0) > 0)

        try:
            await eventually(counted, what=f"{name} to announce {workflow}")
        except BaseException:
            proc.kill()  # not left running to heartbeat into the next test's Redis
            raise
    return proc


async def start_workers(
    redis_url: str,
    target: str,
    names: Sequence[str],
    *extra: str,
    worker_ids: bool = False,
    module: str = str(FLOWS),
    workflow: str = "echo",
    env: dict[str, str] | None = None,
) -> list[Proc]:
    """Workers serving `module`, one per name (with `--worker-id NAME` when worker_ids),
    started at once rather than one after another; returns once each has its stream to
    the control plane open and the control plane counts at least that many workers."""
    procs = [
        spawn(
            name,
            "worker",
            module,
            "--control-plane",
            target,
            "--redis",
            redis_url,
            *(("--worker-id", name) if worker_ids else ()),
            *extra,
            env={"LONGLINE_TEST_REDIS": counters_url(redis_url), **(env or {})},
        )
        for name in names
    ]
    async with longline.Client(target.split(",")[0]) as client:

        async def counted() -> bool:
            for proc in procs:
                if proc.popen.poll() is not None:
                    raise AssertionError(f"{proc.name} exited early:\n{proc.output()}")
            now = {w.name: w.workers for w in await client.list_workflows()}.get(workflow, 0)
            connected = all("connected to control plane replica" in p.output() for p in procs)
            return connected and now >= len(procs)

        try:
            await eventually(counted, what=f"{', '.join(names)} to announce {workflow}")
        except BaseException:
            for proc in procs:
                proc.kill()  # not left running to heartbeat into the next test's Redis
            raise
    return procs
