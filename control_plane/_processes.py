"""`longline control-plane --processes N`: N replicas in one pod, sharing its ports.

One Python process runs one event loop on one core; a control plane given more cores
than that runs more processes. Each is a whole replica (its own replica id, Redis pool,
event hub and dispatcher), exactly as if it ran in a pod of its own, and they share the
gRPC and HTTP ports through SO_REUSEPORT: the kernel spreads new connections over them.
Nothing is shared between them but Redis, as between replicas anywhere.

The first process (this one) only supervises: it checks the ports are free, starts the
replicas, passes SIGTERM/SIGINT (stop, draining) and SIGHUP (reload tokens) on to them,
and starts again, with backoff, one that exits on its own. One that cannot start (it
exits within STARTUP seconds, twice in a row) stops them all with its exit code: a
deployment that refuses a replica refuses every one. Entry-point code: it handles signals.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

from ._settings import ControlPlaneSettings

STARTUP = 10.0  # seconds: a replica that exits sooner did not start
_GRACE = 10.0  # seconds beyond the replicas' shutdown grace before they are killed


def count(settings: ControlPlaneSettings) -> int:
    """How many replicas `--processes` asks for (0: one per core it may use)."""
    return settings.processes or cores()


def cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: those it may run on, fewer under a CPU limit (a
    container's, cgroup v2: a pod limited to 2 CPUs on a 32-core node counts 2), at least 1."""
    n = len(os.sched_getaffinity(0)) or 1
    try:
        with open(cpu_max) as f:
            quota, _, period = f.read().strip().partition(" ")
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read: every core it may run on
    return n


def replica_settings(settings: ControlPlaneSettings, index: int) -> ControlPlaneSettings:
    """The settings of replica `index`: its own replica id, the shared ports, and metrics on
    a port of its own (the given port plus its index; each process has its own counters)."""
    metrics = settings.metrics_listen
    if metrics:
        host, _, port = metrics.rpartition(":")
        metrics = f"{host}:{int(port) + index}" if int(port) else metrics
    return dataclasses.replace(
        settings,
        processes=1,
        reuse_port=True,
        replica_id=f"{settings.replica_id}-{index}",
        metrics_listen=metrics,
    )


def check_ports(settings: ControlPlaneSettings) -> None:
    """ValueError when a port the replicas would share is 0 (each would pick its own) or in
    use: SO_REUSEPORT must not join another server's port."""
    for flag, address in (
        ("--listen", settings.listen),
        ("--worker-listen", settings.worker_listen),
        ("--http-listen", settings.http_listen),
    ):
        if not address:
            continue
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        if not port.isdigit() or int(port) == 0:
            raise ValueError(f"--processes above 1 needs a fixed port for {flag}, not {address}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As servers bind (a port left in TIME_WAIT by the last run is free to them).
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                raise ValueError(f"{flag} {address} cannot be listened on: {exc}") from None


def supervise(
    settings: ControlPlaneSettings, run: Callable[[ControlPlaneSettings, int], None]
) -> int:
    """Run `count(settings)` replicas, each `run(replica_settings(...), this process's pid)`
    in a process of its own, until a stop signal; the exit code."""
    check_ports(settings)
    n = count(settings)
    context = multiprocessing.get_context("spawn")
    procs: dict[int, BaseProcess] = {}
    started: dict[int, float] = {}
    failures: dict[int, int] = {}
    due: dict[int, float] = {}  # replicas waiting to start again: index -> when
    stopping = False
    signals = 0  # stop signals received (a second one quits at once)
    code = 0

    def start(index: int) -> None:
        proc = context.Process(
            target=run,
            args=(replica_settings(settings, index), os.getpid()),
            name=f"replica-{index}",
        )
        proc.start()
        procs[index], started[index] = proc, time.monotonic()
        if stopping and proc.pid is not None:  # a stop came while it was being started
            os.kill(proc.pid, signal.SIGTERM)

    def stop() -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # a second signal: at once
            for proc in procs.values():
                if proc.pid is not None:
                    os.kill(proc.pid, signal.SIGKILL)
            os._exit(130)
        stop()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    print(f"longline control-plane: {n} processes on {settings.listen}", file=sys.stderr)
    for index in range(n):
        start(index)
    deadline = float("inf")
    while procs or due:
        if stopping:
            due.clear()
            deadline = min(deadline, time.monotonic() + settings.shutdown_grace + _GRACE)
            if time.monotonic() > deadline:
                for proc in procs.values():
                    proc.kill()
        for index, proc in list(procs.items()):
            proc.join(0.1 if len(procs) == 1 else 0.1 / len(procs))
            if proc.exitcode is None:
                continue
            del procs[index]
            if stopping:
                code = code or (proc.exitcode if proc.exitcode > 0 else 0)
                continue
            quick = time.monotonic() - started[index] < STARTUP
            failures[index] = failures.get(index, 0) + 1 if quick else 1
            print(
                f"longline control-plane: replica {index} exited with code {proc.exitcode}"
                + ("; starting it again" if failures[index] < 2 or not quick else ""),
                file=sys.stderr,
            )
            if quick and failures[index] >= 2:  # it cannot start: neither can the others
                code = proc.exitcode if proc.exitcode > 0 else 1
                stop()
                continue
            due[index] = time.monotonic() + min(30.0, 0.5 * 2 ** failures[index])
        for index, when in list(due.items()):
            if time.monotonic() >= when and not stopping:
                del due[index]
                start(index)
        if not procs and due:
            time.sleep(0.1)
    return code
