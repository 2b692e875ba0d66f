"""The Redis client every process uses survives being cancelled mid-command."""

from __future__ import annotations

import asyncio

from longline._store import connect


async def test_cancelling_a_blocked_read_always_ends_the_task(redis_url: str) -> None:
    """Python 3.11's asyncio.timeout could swallow the cancel and hang the task forever."""
    await cancel_blocked_reads(redis_url, 60)


async def cancel_blocked_reads(url: str, steps: int) -> None:
    """Cancel a blocked XREADGROUP at different points, `steps` times, through each kind of
    pool connect() makes: every task ends, and the client still works."""
    for pool in (0, 1):
        client = connect(url, max_connections=pool, socket_timeout=30)
        await client.xgroup_create("probe", "g", id="$", mkstream=True)
        for i in range(steps):
            task = asyncio.create_task(
                client.xreadgroup("g", "c", {"probe": ">"}, count=1, block=10_000)
            )
            for _ in range(1 + i % 6):  # cancel at different points of the command
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, f"a cancelled XREADGROUP hung (pool={pool}, step {i})"
        assert await client.ping()  # and the client still works
        await client.delete("probe")
        await client.aclose()
