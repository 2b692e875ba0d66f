"""The dev stack as a library: it starts what `longline dev` starts (on one embedded Redis
or a local Redis Cluster), refuses bad settings in one ValueError having stopped what it
started, and leaves the environment as it was."""

from __future__ import annotations

import asyncio
import os

import pytest

import longline
from longline._devstack import DevStack
from tests.conftest import FLOWS


async def test_the_offline_model_serves_only_while_the_stack_is_open(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "mine")
    said: list[str] = []
    async with DevStack(
        str(FLOWS),
        redis_url=redis_url,
        offline_model=True,
        control_plane={"listen": "127.0.0.1:0"},
        worker={"slots": 2, "drain_timeout": 1},
        connect_timeout=10,
        report=said.append,
    ) as stack:
        assert stack.offline is not None
        assert os.environ["OPENAI_BASE_URL"] == stack.offline.base_url
        assert os.environ["OPENAI_API_KEY"] == "offline"
        assert "echo" in stack.workflows
        async with longline.Client(stack.target) as client:
            handle = await client.start("echo", {"a": 1})
            assert await asyncio.wait_for(handle.result(), 20) == {"a": 1}
    assert "OPENAI_BASE_URL" not in os.environ and os.environ["OPENAI_API_KEY"] == "mine"
    assert any("serving the OFFLINE model" in line for line in said)


async def test_bad_settings_are_one_value_error_and_nothing_is_left_running(
    redis_url: str,
) -> None:
    before = asyncio.all_tasks()
    stack = DevStack(
        str(FLOWS), redis_url=redis_url, offline_model=False, control_plane={"ack_timeout": 0}
    )
    with pytest.raises(ValueError, match="--ack-timeout must be more than 0"):
        await stack.start()
    stack = DevStack(
        "no_such_module_here",
        redis_url=redis_url,
        offline_model=False,
        control_plane={"listen": "127.0.0.1:0"},
    )
    with pytest.raises(ValueError, match="cannot import workflow module 'no_such_module_here'"):
        await stack.start()
    await stack.aclose()  # a second close does nothing
    with pytest.raises(ValueError, match="redis_url or redis_cluster, not both"):
        DevStack(str(FLOWS), redis_url=redis_url, redis_cluster=True)
    assert asyncio.all_tasks() == before


async def test_a_stack_on_a_redis_cluster_of_its_own_runs_workflows_and_stops_it() -> None:
    said: list[str] = []
    async with DevStack(
        str(FLOWS),
        redis_cluster=True,
        offline_model=False,
        control_plane={"listen": "127.0.0.1:0"},
        worker={"slots": 4, "drain_timeout": 1},
        connect_timeout=10,
        report=said.append,
    ) as stack:
        cluster = stack.cluster
        assert cluster is not None and stack.embedded is None
        assert stack.redis_url == cluster.longline_url
        assert stack.redis_url.startswith("redis+cluster://")
        async with longline.Client(stack.target) as client:
            handles = [await client.start("echo", {"n": n}) for n in range(6)]
            results = [await asyncio.wait_for(h.result(), 20) for h in handles]
        assert results == [{"n": n} for n in range(6)]
        held = {}
        for port in cluster.master_ports:
            with cluster.node(port).client() as c:
                assert c.cluster("INFO")["cluster_state"] == "ok"
                held[port] = c.dbsize()
        assert len(held) == 3 and sum(1 for keys in held.values() if keys) >= 2, held
    assert all(n.proc is not None and n.proc.poll() is not None for n in cluster.nodes)
    started = f"started an embedded Redis Cluster of 3 masters ({cluster.binary})"
    assert any(line.startswith(started) and cluster.longline_url in line for line in said), said


async def test_a_stack_that_fails_to_start_stops_the_cluster_it_started() -> None:
    stack = DevStack(
        str(FLOWS), redis_cluster=True, offline_model=False, control_plane={"ack_timeout": 0}
    )
    with pytest.raises(ValueError, match="--ack-timeout must be more than 0"):
        await stack.start()
    assert stack.cluster is not None
    assert all(n.proc is not None and n.proc.poll() is not None for n in stack.cluster.nodes)
