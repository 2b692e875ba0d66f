"""Kill, pause and drain workers, kill a replica, restart Redis: runs still end right, once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

import longline
from longline._embedded import EmbeddedRedis, free_port
from longline._store import keys
from tests.chaos.conftest import LEASE
from tests.conftest import ROOT, eventually
from tests.procs import Proc, start_control_plane, start_worker

EventType = longline.EventType
pytestmark = pytest.mark.slow  # skipped by --skip-slow locally, never in CI


async def _holder(redis: aioredis.Redis, run_id: str) -> str:
    return str(await redis.hget(keys.run_key(run_id), "worker_id") or "")


async def _events(target: str, run_id: str) -> list[longline.Event]:
    async with longline.Client(target) as client:
        return [e async for e in client.get_run(run_id).events()]


def _terminal(events: list[longline.Event]) -> list[longline.Event]:
    return [e for e in events if e.type.terminal]


async def test_kill_9_of_a_worker_mid_step_resumes_elsewhere_from_checkpoints(
    counters: aioredis.Redis, redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    workers = {}
    for name in ("w1", "w2"):
        workers[name] = await start_worker(redis_url, target, "--worker-id", name, name=name)
        procs.append(workers[name])
    async with longline.Client(target) as client:
        handle = await client.start("five_steps", {"delay": 0.4})
        async for event in handle.events():
            if event.type is EventType.COMPONENT_STARTED and event.data["step"] == "chaos_step#3":
                break
        victim = await _holder(redis, handle.run_id)
        workers[victim].kill()  # kill -9 while step 3 is in flight
        assert await handle.result() == {"steps": 5}
    counts = await counters.hgetall(f"test:steps:{handle.run_id}")
    assert counts["1"] == counts["2"] == "1"  # finished steps ran once in total
    assert counts["3"] in ("1", "2")  # the interrupted step at most twice
    assert counts["4"] == counts["5"] == "1"
    events = await _events(target, handle.run_id)
    retrying = [e for e in events if e.type is EventType.RUN_RETRYING]
    assert len(retrying) == 1 and "stopped renewing the lease" in retrying[0].message
    assert any(e.attempt == 2 and e.type is EventType.RUN_STARTED for e in events)
    assert len(_terminal(events)) == 1
    assert await _holder(redis, handle.run_id) != victim  # the other worker finished it

    # The trace, rebuilt from the events alone, tells the story.
    shown = subprocess.run(
        [sys.executable, "-m", "longline._cli", "trace", handle.run_id, "--control-plane", target],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "five_steps SUCCEEDED: 2 attempts" in out
    assert f"attempt 1 on {victim}" in out and "interrupted: worker" in out
    assert "attempt 2 on " in out and " · ok" in out
    assert "↺ chaos_step#1 replayed from a checkpoint" in out
    assert "↺ chaos_step#2 replayed from a checkpoint" in out
    assert "chaos_step#3" in out.split("attempt 2")[1]  # ran again in attempt 2


async def test_a_paused_worker_that_wakes_up_writes_nothing_more(
    redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    first = await start_worker(redis_url, target, "--worker-id", "first", name="first")
    procs.append(first)
    async with longline.Client(target) as client:
        handle = await client.start("five_steps", {"delay": 0.5})
        async for event in handle.events():
            if event.type is EventType.COMPONENT_STARTED:
                break
        first.popen.send_signal(signal.SIGSTOP)  # paused past its lease
        try:
            procs.append(
                await start_worker(redis_url, target, "--worker-id", "second", name="second")
            )
            assert await handle.result() == {"steps": 5}
            assert await _holder(redis, handle.run_id) == "second"
        finally:
            first.popen.send_signal(signal.SIGCONT)

        async def zombie_gave_up() -> bool:
            out = first.output()
            return any(
                sign in out for sign in ("no longer ours", "lost its lease", "lease not renewed")
            )

        await eventually(zombie_gave_up, what="the woken worker to notice its lease is gone")
        events = await _events(target, handle.run_id)
        assert len(_terminal(events)) == 1
        after = events.index(next(e for e in events if e.type is EventType.RUN_RETRYING))
        assert all(e.attempt >= 2 for e in events[after:]), "attempt 1 wrote after losing its lease"
        assert first.popen.poll() is None  # and the woken worker keeps serving
        assert await client.run("echo", "alive") == "alive"


async def test_sigterm_drains_then_hands_the_rest_over_at_once(
    counters: aioredis.Redis, redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    # A long lease: a release that waited for the lease to run out would show.
    cp, target = await start_control_plane(
        redis_url, "--lease-timeout", "30", "--heartbeat-interval", "0.5"
    )
    procs.append(cp)
    health = f"127.0.0.1:{free_port()}"
    draining = await start_worker(
        redis_url,
        target,
        "--worker-id",
        "old",
        "--slots",
        "10",
        "--drain-timeout",
        "1",
        "--health-listen",
        health,
        name="old",
    )
    procs.append(draining)
    async with longline.Client(target) as client:
        # Runs of 7.5 s: still going when the 1 s drain ends, however slow the new worker's start.
        handles = [await client.start("five_steps", {"delay": 1.5}) for _ in range(10)]

        async def all_running() -> bool:
            return all([await _holder(redis, h.run_id) == "old" for h in handles])

        await eventually(all_running, what="10 runs on the old worker")
        procs.append(
            await start_worker(redis_url, target, "--worker-id", "new", "--slots", "10", name="new")
        )
        stopped_at = time.time()
        draining.popen.send_signal(signal.SIGTERM)

        async def not_serving() -> bool:
            return await _health(health) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, timeout=5, what="readiness to turn NOT_SERVING")
        results = await asyncio.gather(*(h.result() for h in handles))
        assert results == [{"steps": 5}] * 10
        assert draining.popen.wait(10) == 0  # it stopped by itself after handing over
    for h in handles:
        counts = await counters.hgetall(f"test:steps:{h.run_id}")
        events = await _events(target, h.run_id)
        retried = [e for e in events if e.type is EventType.RUN_RETRYING]
        assert len(retried) == 1, [e.message for e in retried]
        assert "drained before the run finished" in retried[0].message
        # running again soon after the 1 s drain deadline, not after the 30 s lease timeout
        restarted = next(e for e in events if e.type is EventType.RUN_STARTED and e.attempt == 2)
        assert restarted.time is not None and restarted.time.timestamp() - stopped_at < 15
        finished_first = {
            e.data["step"]
            for e in events
            if e.type is EventType.COMPONENT_FINISHED and e.attempt == 1
        }
        for step in finished_first:
            n = step.split("#")[1]
            assert counts[n] == "1", f"finished step {step} ran again"
        assert len(_terminal(events)) == 1


async def test_killing_the_replica_serving_a_stream_moves_it_to_the_other(
    redis_url: str, procs: list[Proc]
) -> None:
    cp1, target1 = await start_control_plane(redis_url, *LEASE, name="cp1")
    cp2, target2 = await start_control_plane(redis_url, *LEASE, name="cp2")
    procs += [cp1, cp2]
    procs.append(await start_worker(redis_url, f"{target1},{target2}"))
    async with longline.Client(f"{target1},{target2}") as client:
        handle = await client.start("five_steps", {"delay": 0.3})
        seen: list[longline.Event] = []
        async for event in handle.events():
            seen.append(event)
            if len(seen) == 5:
                assert client.target == target1
                cp1.kill()
        assert client.target == target2
    assert seen[-1].type is EventType.RUN_SUCCEEDED
    ids = [e.event_id for e in seen]
    assert len(ids) == len(set(ids))
    assert ids == [e.event_id for e in await _events(target2, handle.run_id)]


async def test_redis_restart_in_the_middle_of_runs_loses_and_duplicates_nothing(
    procs: list[Proc],
) -> None:
    with EmbeddedRedis(appendonly=True) as server:
        os.environ["LONGLINE_TEST_REDIS"] = server.url
        cp, target = await start_control_plane(
            server.url, "--lease-timeout", "5", "--heartbeat-interval", "0.5"
        )
        procs.append(cp)
        procs.append(await start_worker(server.url, target))
        async with longline.Client(target) as client:
            handles = [await client.start("five_steps", {"delay": 0.3}) for _ in range(5)]
            for h in handles:
                async for event in h.events():
                    if event.type is EventType.COMPONENT_STARTED:
                        break
            await asyncio.to_thread(server.restart, 1.0)  # down for a second, mid-run
            results = await asyncio.gather(*(h.result() for h in handles))
            assert results == [{"steps": 5}] * 5
            for h in handles:
                events = [e async for e in h.events()]
                assert len(_terminal(events)) == 1
                ids = [e.event_id for e in events]
                assert len(ids) == len(set(ids))
                # every step's events are there once, in order, for the attempt that ran it
                finished = [
                    e.data["step"] for e in events if e.type is EventType.COMPONENT_FINISHED
                ]
                assert len(finished) == len(set(finished)) == 5


async def test_a_workflow_that_kills_its_worker_every_time_fails_after_max_attempts(
    redis_url: str, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    for name in ("w1", "w2"):  # crasher has max_attempts=2: each attempt takes a worker down
        procs.append(await start_worker(redis_url, target, "--worker-id", name, name=name))
    async with longline.Client(target) as client:
        handle = await client.start("crasher")
        try:
            await handle.result()
            raise AssertionError("the run should have failed")
        except longline.RunFailed as failed:
            assert failed.error is not None
            assert failed.error.type == "AttemptsExhausted"
            assert "gave up after 2 lost attempts (max_attempts 2)" in failed.error.message
        events = [e async for e in handle.events()]
    assert [e.type for e in events].count(EventType.RUN_RETRYING) == 1
    assert len(_terminal(events)) == 1
    assert json.loads(events[-1].data_json)["type"] == "AttemptsExhausted"


async def test_a_run_cancelled_while_its_worker_is_dead_ends_cancelled_once(
    redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    worker = await start_worker(redis_url, target, "--worker-id", "doomed", name="doomed")
    procs.append(worker)
    async with longline.Client(target) as client:
        handle = await client.start("five_steps", {"delay": 0.5})
        await anext(e async for e in handle.events() if e.type is EventType.COMPONENT_STARTED)
        worker.kill()
        killed_at = await _redis_seconds(redis)
        cancelled = await handle.cancel("nobody needs it now")
        assert cancelled.status is longline.RunStatus.CANCELLED
        assert (
            await redis.zscore(keys.leases_key(keys.partition_of(handle.run_id)), handle.run_id)
            is None
        )

        # Outlive the 2 s lease: the monitor must not bring the cancelled run back.
        async def lease_would_have_expired() -> bool:
            return await _redis_seconds(redis) > killed_at + 3

        await eventually(lease_would_have_expired, what="the old lease's expiry to pass")
        backup = await start_worker(redis_url, target, "--worker-id", "backup", name="backup")
        procs.append(backup)
        assert await client.run("echo", "after") == "after"  # the monitor has had its turns
        events = [e async for e in handle.events()]
    assert [e.type for e in events].count(EventType.RUN_CANCELLED) == 1
    assert EventType.RUN_RETRYING not in [e.type for e in events]
    assert (await client_status(target, handle.run_id)) is longline.RunStatus.CANCELLED


async def _health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
        return int(reply.status)


async def _redis_seconds(redis: aioredis.Redis) -> float:
    seconds, micros = await redis.time()
    return float(seconds) + micros / 1e6


async def client_status(target: str, run_id: str) -> longline.RunStatus:
    async with longline.Client(target) as client:
        return (await client.get_run(run_id).describe()).status


async def test_a_second_signal_stops_a_draining_worker_at_once(
    redis_url: str, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, *LEASE)
    procs.append(cp)
    worker = await start_worker(redis_url, target, "--drain-timeout", "60")
    procs.append(worker)
    async with longline.Client(target) as client:
        handle = await client.start("five_steps", {"delay": 5})
        await anext(e async for e in handle.events() if e.type is EventType.COMPONENT_STARTED)
        worker.popen.send_signal(signal.SIGTERM)  # would drain for up to a minute
        await eventually(
            lambda: _true("draining: waiting" in worker.output()), what="the drain to begin"
        )
        worker.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.popen.wait, 10) == 130
        await handle.cancel()


async def _true(value: bool) -> bool:
    return value
