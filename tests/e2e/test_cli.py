"""The `longline` command against real processes, as a user types it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import longline
from tests.conftest import ROOT
from tests.procs import Proc, start_control_plane, start_worker


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "longline._cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_dev_runs_the_demo_end_to_end() -> None:
    """What `make demo` does, on an embedded Redis and a free port."""
    done = cli(
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--run",
        "blog_post",
        "--input",
        '{"topic": "tides", "sections": 2}',
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "started an embedded Redis" in out
    assert re.search(r"HTTP API on http://127\.0\.0\.1:[0-9]+ \(OpenAPI: .*/openapi\.json\)", out)
    assert re.search(r"web UI on http://127\.0\.0\.1:[0-9]+/ui/", out)
    assert "serving the OFFLINE model" in out and "at the offline model" in out
    assert out.count("## ") >= 2  # the sections were streamed
    assert "✓ succeeded; result:" in out
    assert '"topic": "tides"' in out


def test_dev_refuses_a_redis_cluster_and_a_redis_url_together() -> None:
    done = cli("dev", "--redis", "redis://127.0.0.1:1/0", "--redis-cluster", timeout=20)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--redis-cluster starts a Redis Cluster of its own" in done.stderr
    assert "cannot go with --redis" in done.stderr
    assert "started" not in done.stdout  # refused before anything started


async def test_run_watch_runs_cancel_and_workflows(redis_url: str, procs: list[Proc]) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.append(await start_worker(redis_url, target))
    flag = ("--control-plane", target)

    ran = cli("run", "echo", "--input", '{"a": 1}', *flag)
    assert ran.returncode == 0, ran.stderr
    run_id = re.search(r"queued run (\w+)", ran.stdout).group(1)  # type: ignore[union-attr]
    assert '"a": 1' in ran.stdout

    failed = cli("run", "boom", *flag)
    assert failed.returncode == 1
    assert "✗ failed: ValueError in explode: the widget broke" in failed.stdout

    listed = cli("runs", "--workflow", "echo", *flag)
    assert run_id in listed.stdout and "SUCCEEDED" in listed.stdout

    async with longline.Client(target) as client:
        events = [e async for e in client.get_run(run_id).events()]
    watched = cli("watch", run_id, "--after", events[1].event_id, *flag)
    assert watched.returncode == 0
    assert "queued run" not in watched.stdout and "· echoing" in watched.stdout

    refused = cli("cancel", run_id, *flag)
    assert refused.returncode == 1
    assert f"run '{run_id}' already ended SUCCEEDED" in refused.stderr

    unknown = cli("run", "nope", *flag)
    assert unknown.returncode == 1 and "'nope' is not known" in unknown.stderr

    workflows = cli("workflows", *flag)
    assert re.search(r"echo\s+1 workers\s+Returns its input.", workflows.stdout)


async def test_schedules_from_the_command_line(redis_url: str, procs: list[Proc]) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.append(await start_worker(redis_url, target))
    flag = ("--control-plane", target)
    made = cli(
        "schedules",
        "create",
        "digest",
        "echo",
        "--cron",
        "0 8 * * 1-5",
        "--time-zone",
        "Europe/Berlin",
        "--input",
        '{"team": "a"}',
        "--overlap",
        "buffer_one",
        *flag,
    )
    assert made.returncode == 0, made.stderr
    assert "schedule digest: active" in made.stdout
    assert "cron     0 8 * * 1-5 in Europe/Berlin" in made.stdout
    assert "overlap  BUFFER_ONE; catch-up window 3600 s" in made.stdout
    assert re.search(r"next     \d{4}-\d\d-\d\dT08:00:00\+0[12]:00", made.stdout), made.stdout
    listed = cli("schedules", "list", *flag)
    assert re.search(r"digest\s+'0 8 \* \* 1-5'\s+Europe/Berlin\s+echo\s+next ", listed.stdout)
    triggered = cli("schedules", "trigger", "digest", *flag)
    assert triggered.returncode == 0 and "started run " in triggered.stdout
    paused = cli("schedules", "pause", "digest", "--note", "holidays", *flag)
    assert "schedule digest: paused (holidays)" in paused.stdout
    bad = cli("schedules", "create", "other", "echo", "--cron", "0 25 * * *", *flag)
    assert bad.returncode == 1 and "cron '0 25 * * *' is not valid" in bad.stderr
    zone = cli(
        "schedules",
        "update",
        "digest",
        "echo",
        "--cron",
        "@daily",
        "--time-zone",
        "Mars/Base",
        *flag,
    )
    assert zone.returncode == 1 and "time zone 'Mars/Base' is not known" in zone.stderr
    gone = cli("schedules", "delete", "digest", *flag)
    assert gone.returncode == 0 and "deleted" in gone.stdout
    assert "no schedules" in cli("schedules", "list", *flag).stdout


async def test_ctrl_c_detaches_and_prints_how_to_resume(redis_url: str, procs: list[Proc]) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.append(await start_worker(redis_url, target))
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "longline._cli",
        "run",
        "slow",
        "--input",
        '{"steps": 100000, "delay": 0.01}',
        "--control-plane",
        target,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert run.stdout is not None
    try:
        seen = ""
        while "· tick 3" not in seen:
            line = await asyncio.wait_for(run.stdout.readline(), 20)
            assert line, f"longline run ended early: {seen}"
            seen += line.decode()
        run.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(run.stdout.read(), 20)).decode()
        assert await asyncio.wait_for(run.wait(), 10) == 130
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    match = re.search(r"longline watch (\w+) --after (\d+-\d+)", rest)
    assert match, rest
    async with longline.Client(target) as client:
        handle = client.get_run(match.group(1))
        assert (await handle.describe()).status is longline.RunStatus.RUNNING  # it went on
        await handle.cancel()
