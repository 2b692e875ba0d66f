"""What one Redis command costs the process that sends it, by path (docs/performance.md,
"The top three costs left"): redis-py's command path with each kind of pool connect()
makes and with redis-py's own BlockingConnectionPool, a connection taken from the pool
and written and read directly, and connections kept in a deque with no pool at all.
`HGETALL` of a small hash, 32 callers, uvloop, on a Redis of its own; CPU of this process
per command.

    python -m tests.bench.commands [--commands 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import uvloop

from longline._embedded import EmbeddedRedis
from longline._store import connect

CALLERS = 32


async def _cost(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """(µs of CPU per command, commands per second) of `call` made n times by CALLERS."""

    async def caller(k: int) -> None:
        for _ in range(k):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(n // CALLERS) for _ in range(CALLERS)))
    return (time.process_time() - cpu) / n * 1e6, n / (time.perf_counter() - wall)


async def main(url: str, n: int) -> None:
    quick, plain = connect(url, max_connections=CALLERS), connect(url)
    blocking = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(
            url, max_connections=CALLERS, timeout=None, decode_responses=True, protocol=2
        )
    )
    await plain.hset("h", mapping={"a": "1", "b": "2", "c": "3"})
    pool = blocking.connection_pool

    async def direct() -> Any:
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_command("HGETALL", "h"), check_health=False)
            return await conn.read_response()
        finally:
            await pool.release(conn)

    kept: collections.deque[Any] = collections.deque()
    for _ in range(CALLERS):
        conn = pool.make_connection()
        await conn.connect()
        kept.append(conn)

    async def no_pool() -> Any:
        conn = kept.popleft()
        try:
            await conn.send_packed_command(conn.pack_command("HGETALL", "h"), check_health=False)
            return await conn.read_response()
        finally:
            kept.append(conn)

    paths: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("connect(): BlockingConnectionPool + QuickCheckout", lambda: quick.hgetall("h")),
        ("redis-py, its own BlockingConnectionPool", lambda: blocking.hgetall("h")),
        ("redis-py, the plain ConnectionPool", lambda: plain.hgetall("h")),
        ("the pool's connection written and read directly", direct),
        ("connections kept in a deque, no pool", no_pool),
    ]
    for name, call in paths:
        await _cost(call, 1000)  # warm
        us, rate = await _cost(call, n)
        print(f"{name:56s} {us:6.1f} µs CPU/command  {rate:8.0f} commands/s")
    for conn in kept:
        await conn.disconnect()
    await blocking.aclose()
    await quick.aclose()
    await plain.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=20_000)
    args = parser.parse_args()
    with EmbeddedRedis() as redis:
        uvloop.run(main(redis.url, args.commands))
