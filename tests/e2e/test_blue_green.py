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
    redis_url: str, redis: aioredis.Redis, procs: list[Proc]
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
        # 6 s runs: still going when the 1 s drain of v1 ends, however slow v2 is to start.
        early = [await client.start("five_steps", {"delay": 1.2}) for _ in range(20)]

        async def all_running() -> bool:
            builds = [await redis.hget(keys.run_key(h.run_id), "build") for h in early]
            return builds == ["v1"] * 20

        await eventually(all_running, what="20 runs running on v1")
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
        late = [await client.start("five_steps", {"delay": 0.1}) for _ in range(5)]
        for proc in v1:
            proc.popen.terminate()  # SIGTERM, as Kubernetes does
        results = await asyncio.gather(*(h.result() for h in early + late))
        assert results == [{"steps": 5}] * 25
        for proc in v1:
            assert proc.popen.wait(15) == 0, proc.output()

        moved = replayed = 0
        for h in early:
            attempts = await _attempts(target, h.run_id)
            assert attempts[0][0] == "v1"
            moved += attempts[-1][0] == "v2"
            counts = await redis.hgetall(f"test:steps:{h.run_id}")
            # A step that finished before the last attempt is a checkpoint: never run again.
            # (The step in flight at the drain deadline did not finish, and runs again.)
            for _, finished in attempts[:-1]:
                replayed += len(finished)
                for n in finished:
                    assert counts[n] == "1", f"finished step {n} of {h.run_id} ran again"
        assert moved > 0 and replayed > 0, "the drain deadline came before any early run ended"
        for h in late:
            assert [build for build, _ in await _attempts(target, h.run_id)] == ["v2"]

        (state,) = await client.list_builds("five_steps")
        assert state.current_build_id == "v2"
        assert state.unserved_runs == 0
        assert {b.build_id: (b.workers, b.queued_runs, b.running_runs) for b in state.builds} == {
            "v2": (2, 0, 0)  # v1 is gone: no workers, no runs left
        }
    out = await _cli("builds", "list", "--control-plane", target)
    assert "five_steps  current build: v2  policy: WHEN_UNSERVED" in out
