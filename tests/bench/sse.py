"""B10: the HTTP face's Server-Sent Events, the figures of B3 (many watchers) and B5 (one
fast run) over HTTP. The watchers are aiohttp clients in the bench's own process (one
session, one client process, apart from the control plane's); runs are started with
`POST /v1/workflows/{workflow}/runs`."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import psutil
import redis as sync_redis

from longline._embedded import free_port
from tests.bench.b1 import stack
from tests.procs import Proc

BATCH = 200  # connections opened at once: well under the listen backlog (4096)
TERMINAL = frozenset(
    {b"EVENT_TYPE_RUN_SUCCEEDED", b"EVENT_TYPE_RUN_FAILED", b"EVENT_TYPE_RUN_CANCELLED"}
)
STATUS = b"EVENT_TYPE_STATUS"
OUTPUT = b"EVENT_TYPE_OUTPUT"


def session() -> aiohttp.ClientSession:
    """One session for every watcher: no limit on connections, no deadline on a stream."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    )


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[bytes, bytes]]:
    """(event name, data) of each event of an SSE body; comments and `retry:` are skipped.
    The face writes `\\n` line ends and one `data:` line per event."""
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            name = data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    data = line[6:]
                elif line.startswith(b"event: "):
                    name = line[7:]
            if data:
                yield name, data


async def start_runs(
    http: aiohttp.ClientSession, base: str, workflow: str, inputs: list[Any]
) -> list[str]:
    """Run ids of runs started over HTTP, BATCH at a time."""

    async def one(body: Any) -> str:
        async with http.post(f"{base}/v1/workflows/{workflow}/runs", json=body) as r:
            answer = await r.json(content_type=None)
            if r.status != 202:
                raise RuntimeError(f"StartRun over HTTP: {r.status} {answer}")
            return str(answer["run"]["runId"])

    ids: list[str] = []
    for at in range(0, len(inputs), BATCH):
        ids += await asyncio.gather(*(one(body) for body in inputs[at : at + BATCH]))
    return ids


@dataclass
class Watched:
    """What the SSE watchers of B10 saw."""

    window: list[float] = field(default_factory=list)  # [start, end], wall clock
    latencies_ms: list[float] = field(default_factory=list)  # ctx.status() to received
    stored_ms: list[float] = field(default_factory=list)  # stored in Redis to received
    ended: int = 0  # watchers that saw their run's terminal event
    refused: list[str] = field(default_factory=list)


async def watch(
    http: aiohttp.ClientSession, base: str, run_id: str, seen: Watched, connected: asyncio.Event
) -> None:
    """Follow one run; latency of each STATUS (the worker's clock) emitted in the window."""
    try:
        async with http.get(f"{base}/v1/runs/{run_id}/events") as r:
            if r.status != 200:
                seen.refused.append(f"{r.status} {(await r.text())[:200]}")
                return
            connected.set()
            async for name, data in sse_events(r):
                if name == STATUS:
                    event = json.loads(data)
                    emitted = float(event["message"])
                    # Live events of the steady state only, not the catch-up of a watcher
                    # that joined after the event was written.
                    window = seen.window
                    if len(window) == 2 and window[0] <= emitted <= window[1]:
                        now = time.time()
                        seen.latencies_ms.append((now - emitted) * 1000)
                        stored = datetime.fromisoformat(event["time"]).timestamp()
                        seen.stored_ms.append((now - stored) * 1000)
                elif name in TERMINAL:
                    seen.ended += 1
                    return
    finally:
        connected.set()  # a refused or broken watcher does not hold up the ramp


@dataclass
class WatcherFigures:
    """B10's figures for n SSE watchers of n runs at one event a second."""

    n: int
    idle_connections: int  # before any run
    unwatched_connections: int  # the n runs ticking, no watcher yet
    busy_connections: int  # the n runs ticking, n watchers
    cpu_percent: float
    p50_ms: float
    p99_ms: float
    stored_p50_ms: float  # the part after Redis stored the event (the id's millisecond)
    stored_p99_ms: float
    client_cpu_percent: float  # the watchers' process (this one)
    events: int
    ended: int
    start_s: float  # n StartRuns over HTTP, BATCH at a time
    ramp_s: float  # n watchers connected, BATCH at a time


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


async def watchers(
    redis_url: str, n: int, cp_connections: Callable[[sync_redis.Redis], int], ticks: int = 30
) -> WatcherFigures:
    """n SSE watchers of n `ticker` runs (one STATUS a second), on one control-plane
    replica; the control plane's CPU and Redis connections over a 5 s steady state."""
    procs: list[Proc] = []
    r = sync_redis.Redis.from_url(redis_url)
    try:
        port = free_port()
        await stack(redis_url, procs, "--http-listen", f"127.0.0.1:{port}", slots=n + 10)
        base = f"http://127.0.0.1:{port}"
        cp = psutil.Process(procs[0].popen.pid)
        idle_connections = cp_connections(r)
        seen = Watched()
        async with session() as http:
            t_start = time.time()
            ids = await start_runs(http, base, "ticker", [{"ticks": ticks}] * n)
            start_s = time.time() - t_start
            await asyncio.sleep(2)  # the runs ticking, before any watcher
            unwatched_connections = cp_connections(r)
            t_ramp = time.time()
            tasks = []
            for at in range(0, n, BATCH):
                events = [asyncio.Event() for _ in ids[at : at + BATCH]]
                tasks += [
                    asyncio.create_task(watch(http, base, run_id, seen, e))
                    for run_id, e in zip(ids[at : at + BATCH], events, strict=True)
                ]
                await asyncio.gather(*(e.wait() for e in events))
            if seen.refused:
                raise RuntimeError(f"{len(seen.refused)} SSE watchers refused: {seen.refused[0]}")
            ramp_s = time.time() - t_ramp
            await asyncio.sleep(2)  # every watcher past its catch-up
            seen.window[:] = [time.time(), time.time() + 5]
            if seen.window[1] > t_start + ticks - 2:
                raise RuntimeError(
                    f"setup took {time.time() - t_start:.1f} s: the runs end before the window"
                )
            me = psutil.Process()
            cpu0, me0, t0 = cp.cpu_times(), me.cpu_times(), time.monotonic()
            busy_connections = cp_connections(r)
            await asyncio.sleep(5)
            cpu1, me1, t1 = cp.cpu_times(), me.cpu_times(), time.monotonic()
            await asyncio.gather(*tasks)
        cpu = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0) * 100
        client_cpu = ((me1.user + me1.system) - (me0.user + me0.system)) / (t1 - t0) * 100
        lat = seen.latencies_ms
        return WatcherFigures(
            n,
            idle_connections,
            unwatched_connections,
            busy_connections,
            cpu,
            statistics.median(lat),
            _pct(lat, 0.99),
            statistics.median(seen.stored_ms),
            _pct(seen.stored_ms, 0.99),
            client_cpu,
            len(lat),
            seen.ended,
            start_s,
            ramp_s,
        )
    finally:
        r.close()
        for p in procs:
            p.stop()


async def throughput(redis_url: str, chunks: int) -> float:
    """Output chunks per second from one `firehose` run to one SSE client, from the POST
    that starts it to its terminal event."""
    procs: list[Proc] = []
    try:
        port = free_port()
        await stack(redis_url, procs, "--http-listen", f"127.0.0.1:{port}")
        base = f"http://127.0.0.1:{port}"
        async with session() as http:
            t0 = time.perf_counter()
            (run_id,) = await start_runs(http, base, "firehose", [{"chunks": chunks}])
            received = 0
            async with http.get(f"{base}/v1/runs/{run_id}/events") as r:
                if r.status != 200:
                    raise RuntimeError(f"GET events: {r.status} {await r.text()}")
                async for name, data in sse_events(r):
                    if name == OUTPUT:
                        # Chunks written while an earlier write was on its way arrive
                        # coalesced in one OUTPUT event: count the chunks, not the events.
                        received += json.loads(data)["message"].count("\n")
                    elif name in TERMINAL:
                        break
            wall = time.perf_counter() - t0
        if received != chunks:
            raise RuntimeError(f"{received} of {chunks} chunks arrived over SSE")
        return chunks / wall
    finally:
        for p in procs:
            p.stop()
