"""A rolling blue-green deploy of workers, with real processes and real signals."""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

import longline
from longline._store import keys
from tests.conftest import ROOT, eventually
from tests.procs import Proc, start_control_plane, start_worker


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "longline._cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def _attempts(target: str, run_id: str) -> list[tuple[str, set[str]]]:
    """(build, steps finished in it) of every attempt that started, in order."""
    attempts: list[tuple[str, set[str]]] = []
    async with longline.Client(target) as client:
        async for e in client.get_run(run_id).events():
            if e.type is longline.EventType.RUN_STARTED:
                attempts.append((e.data["build"], set()))
            elif e.type is longline.EventType.COMPONENT_FINISHED:
                attempts[-1][1].add(e.data["step"].split("#")[1])
    return attempts


async def test_a_rolling_deploy_finishes_every_run_and_sends_new_ones_to_the_new_build(
    counters: aioredis.Redis, redis_url: str, redis: aioredis.Redis, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, "--heartbeat-interval", "0.5")
    procs.append(cp)
    v1 = [
        await start_worker(
            redis_url,
            target,
            "--build-id",
            "v1",
            "--slots",
            "10",
            "--drain-timeout",
            "1",
            workflow="five_steps",
            name=f"v1-{n}",
        )
        for n in range(2)
    ]
    procs += v1
    out = await _cli("builds", "promote", "five_steps", "v1", "--control-plane", target)
    assert "five_steps: build v1 is current (was none)" in out

    async with longline.Client(target) as client:
        # Each early run finishes step 1 on v1, then waits at a gate the test opens only
        # once v1 is gone: every one of them is mid-run when v1 drains, whatever the timing.
        early = [await client.start("gated") for _ in range(20)]

        async def all_at_the_gate() -> bool:
            for h in early:
                counts = await counters.hgetall(f"test:steps:{h.run_id}")
                if (
                    counts.get("2") != "1"
                    or await redis.hget(keys.run_key(h.run_id), "build") != "v1"
                ):
                    return False
            return True

        await eventually(all_at_the_gate, what="20 runs on v1 waiting at the gate")
        for n in range(2):
            procs.append(
                await start_worker(
                    redis_url,
                    target,
                    "--build-id",
                    "v2",
                    "--slots",
                    "16",
                    workflow="five_steps",
                    name=f"v2-{n}",
                )
            )
        out = await _cli("builds", "promote", "five_steps", "v2", "--control-plane", target)
        assert "five_steps: build v2 is current (was v1)" in out
        await _cli("builds", "promote", "gated", "v2", "--control-plane", target)
        late = [await client.start("five_steps", {"delay": 0.1}) for _ in range(5)]
        for proc in v1:
            proc.popen.terminate()  # SIGTERM, as Kubernetes does
        for proc in v1:
            assert proc.popen.wait(15) == 0, proc.output()  # drained: released what was left
        await counters.set("test:gate", "open")
        results = await asyncio.gather(*(h.result() for h in early + late))
        assert results == [{"steps": 3}] * 20 + [{"steps": 5}] * 5

        for h in early:
            attempts = await _attempts(target, h.run_id)
            assert [build for build, _ in attempts] == ["v1", "v2"], attempts
            assert attempts[0][1] == {"1"}  # step 1 finished on v1 ...
            counts = await counters.hgetall(f"test:steps:{h.run_id}")
            assert counts["1"] == "1", "... and, a checkpoint, never ran again"
            assert counts == {"1": "1", "2": "2", "3": "1"}  # the gate step had not finished
        for h in late:
            assert [build for build, _ in await _attempts(target, h.run_id)] == ["v2"]

        (state,) = await client.list_builds("five_steps")
        assert state.current_build_id == "v2"
        assert state.unserved_runs == 0
        # v1 is gone: no workers, no runs left; v2's two workers are live.
        assert {b.build_id: (b.queued_runs, b.running_runs) for b in state.builds} == {"v2": (0, 0)}
        assert next(b for b in state.builds if b.build_id == "v2").workers >= 1
    out = await _cli("builds", "list", "--control-plane", target)
    assert "five_steps  current build: v2  policy: WHEN_UNSERVED" in out
