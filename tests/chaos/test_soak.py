"""The soak: mixed load for a long time, with workers killed and Redis restarted under it.

Starts, waits, cancels, and watchers joining and leaving, against one control plane and
three workers; kill -9 of a worker (replaced at once) every KILL_EVERY seconds and one
Redis restart half-way. Samples Redis memory, key count and run counts, prints the table,
and ends with no run stuck and nothing of finished runs left once their retention passed.

`make test` runs a short form (LONGLINE_SOAK_SECONDS, 45 s by default: the same three
kills and one restart as 60 s had, inside make test's 15 minutes) with a retention of 5.6 s,
so the wait for the last runs' retention after the load stays short; `make soak` runs 30
minutes with a kill every minute and a retention of 15 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

import longline
from longline._embedded import EmbeddedRedis
from longline._store import Store, keys
from tests.conftest import FLOWS, eventually
from tests.procs import Proc, spawn, start_control_plane, start_workers

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("LONGLINE_SOAK_SECONDS", "45"))
KILL_EVERY = float(os.environ.get("LONGLINE_SOAK_KILL_EVERY", str(min(60.0, SECONDS / 4))))
# 15 s, but an eighth of a short soak: the end waits a retention for the last runs to expire.
RETENTION = min(15.0, SECONDS / 8)
# Three samples per retention: a run that ends is seen before its keys expire, with room for
# a slow round or Redis restarting in between.
SAMPLE_EVERY = min(5.0, RETENTION / 3)
ROW_EVERY = max(5.0, SECONDS / 30)  # a row of the table
# Four partitions: the keys a partition keeps for good (its counters) stay within the
# bound on what is left at the end.
FLAGS = (
    "--lease-timeout",
    "2",
    "--heartbeat-interval",
    "0.5",
    "--retention",
    f"{RETENTION:g}",
    "--partitions",
    "4",
)


@dataclass
class Tally:
    started: dict[str, str] = field(default_factory=dict)  # run_id -> workflow
    ended: set[str] = field(default_factory=set)
    cancelled: int = 0
    watched: int = 0
    errors: list[str] = field(default_factory=list)


async def _load(target: str, tally: Tally, stop: asyncio.Event) -> None:
    rng = random.Random(7)
    async with longline.Client(target) as client:

        async def one() -> None:
            kind = rng.random()
            try:
                if kind < 0.5:
                    handle = await client.start("echo", rng.randrange(1000))
                elif kind < 0.8:  # (not `counted`: its test keys would show in the memory)
                    handle = await client.start("chatty", {"chunks": 5, "delay": 0.02})
                else:
                    handle = await client.start("slow", {"steps": 20, "delay": 0.05})
                tally.started[handle.run_id] = "run"
                roll = rng.random()
                if roll < 0.15:
                    await asyncio.sleep(rng.random())
                    try:
                        await handle.cancel("soak")
                        tally.cancelled += 1
                    except longline.FailedPrecondition:
                        pass  # it ended first
                elif roll < 0.35:  # a watcher that joins, reads a while and leaves
                    tally.watched += 1
                    async with asyncio.timeout(rng.random() * 2):
                        async for _ in handle.events():
                            pass
            except TimeoutError:
                pass
            except (longline.LonglineError, OSError) as exc:
                tally.errors.append(f"{type(exc).__name__}: {exc}")

        tasks: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.05)  # about 20 runs a second
        await asyncio.gather(*tasks, return_exceptions=True)


async def _seen_ended(redis: aioredis.Redis, tally: Tally) -> None:
    """Mark the runs found in a terminal state."""
    open_runs = [r for r in tally.started if r not in tally.ended]
    async with redis.pipeline(transaction=False) as pipe:
        for run_id in open_runs:
            pipe.hget(keys.run_key(run_id), "status")
        statuses = await pipe.execute()
    tally.ended |= {
        r
        for r, s in zip(open_runs, statuses, strict=True)
        if s in ("SUCCEEDED", "FAILED", "CANCELLED")
    }


async def _empty(probe: object) -> bool:
    return not await probe()  # type: ignore[operator]


async def _sample(redis: aioredis.Redis) -> tuple[int, int, dict[str, int]]:
    memory = int((await redis.info("memory"))["used_memory"])
    stats = (await Store(redis).runs.stats()).by_status  # summed over the partitions
    # longline's keys (the test's own step counters aside)
    ours = len([k async for k in redis.scan_iter(match=keys.PREFIX + "*", count=1000)])
    return memory, ours, stats


@pytest.mark.timeout(SECONDS + 600)
async def test_soak(procs: list[Proc]) -> None:
    with EmbeddedRedis(appendonly=True) as server:
        cp, target = await start_control_plane(server.url, *FLAGS)
        procs.append(cp)
        workers = await start_workers(server.url, target, ["w0", "w1", "w2"], "--slots", "16")
        procs.extend(workers)
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        tally, stop = Tally(), asyncio.Event()
        rows: list[str] = []
        load = asyncio.create_task(_load(target, tally, stop))
        _, baseline, _ = await _sample(redis)  # the deployment's own keys, before any run
        t0 = time.monotonic()
        next_kill, next_sample, next_row, restarted, kills = t0 + KILL_EVERY, t0, t0, False, 0
        try:
            while (now := time.monotonic()) - t0 < SECONDS:
                if now >= next_sample:
                    row = now >= next_row
                    try:
                        await _seen_ended(redis, tally)
                        if row:
                            memory, nkeys, stats = await _sample(redis)
                            rows.append(
                                f"{now - t0:7.0f} s {memory / 2**20:9.1f} MiB {nkeys:7d} keys "
                                f"{stats.get('QUEUED', 0):6d} queued "
                                f"{stats.get('RUNNING', 0):5d} running "
                                f"{len(tally.started):7d} started {len(tally.ended):7d} ended"
                            )
                        next_sample = now + SAMPLE_EVERY
                    except (OSError, aioredis.RedisError):
                        rows.append(f"{now - t0:7.0f} s (Redis restarting)")
                        next_sample = now + 0.5  # soon: no run may end and expire unseen
                    if row:
                        next_row = now + ROW_EVERY
                if now >= next_kill:
                    victim = workers.pop(random.randrange(len(workers)))
                    victim.kill()
                    kills += 1
                    # Not start_worker: the dead one still counts until its presence runs out.
                    fresh = spawn(
                        f"w{kills + 2}",
                        "worker",
                        str(FLOWS),
                        "--control-plane",
                        target,
                        "--redis",
                        server.url,
                        "--slots",
                        "16",
                        env={"LONGLINE_TEST_REDIS": server.url},
                    )
                    procs.append(fresh)
                    workers.append(fresh)
                    next_kill = time.monotonic() + KILL_EVERY
                if not restarted and now - t0 >= SECONDS / 2:
                    server.restart(down_for=1.0)  # append-only file: nothing acknowledged lost
                    restarted = True
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await load

        # No run stuck or lost: every run started was seen in a terminal state (samples come
        # more often than the retention, so none expires unseen).
        async def settled() -> list[str]:
            await _seen_ended(redis, tally)
            return [run_id for run_id in tally.started if run_id not in tally.ended]

        try:
            await eventually(lambda: _empty(settled), timeout=90, what="every run to end")
        except AssertionError:
            pass  # reported below with the table
        stuck = await settled()
        # Then nothing of the finished runs is left once their retention passed.

        async def swept() -> bool:
            for kind in ("run:", "events:", "steps:", "idem@"):
                pattern = keys.PREFIX + "{p*}:" + kind + "*"
                if [k async for k in redis.scan_iter(match=pattern, count=1000)]:
                    return False
            return True

        await eventually(swept, timeout=RETENTION * 3 + 30, what="finished runs to expire")
        memory, nkeys, _ = await _sample(redis)
        rows.append(f"   after {memory / 2**20:9.1f} MiB {nkeys:7d} keys (retention passed)")
        per_run = [
            k
            async for k in redis.scan_iter(match=keys.PREFIX + "*", count=1000)
            if re.search(r"\}:(run|events|steps|waits|children):|\}:idem@", k)
        ]
        await redis.aclose()
        print(
            f"\nsoak: {SECONDS:.0f} s, {len(tally.started)} runs started, {tally.cancelled} "
            f"cancelled, {tally.watched} watchers, {kills} workers killed, Redis restarted "
            f"once; {len(stuck)} stuck; {len(tally.errors)} client errors\n" + "\n".join(rows)
        )
        if stuck:
            redis = aioredis.Redis.from_url(server.url, decode_responses=True)
            states = [await redis.hgetall(keys.run_key(r)) for r in stuck[:5]]
            await redis.aclose()
            print("stuck:", states)
        assert not stuck, f"{len(stuck)} runs stuck: {stuck[:5]}"
        # What is left is the deployment's own (per partition: its counters, a queue per
        # workflow served), not a key per run: none of a run's keys is left, and the rest
        # is bounded by the partitions (4) times the keys a partition holds (its four
        # counters, a queue per workflow the load starts, the run indexes).
        assert not per_run, f"keys of runs left after every run expired: {per_run[:5]}"
        assert nkeys <= baseline + 4 * 10, f"{nkeys} keys left after every run expired"
        assert cp.popen.poll() is None
        # Client errors are allowed only while Redis was down (UNAVAILABLE), never INTERNAL.
        assert not [e for e in tally.errors if "INTERNAL" in e or "Internal" in e], tally.errors
