"""Blue-green routing by build id, with real workers of several builds in one process."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

import longline
from longline import EventType
from longline._errors import error_reason
from longline._store import Store, StoredEvent, connect
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from longline.v1 import builds_pb2, builds_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.conftest import FLOWS, eventually
from tests.integration.test_metrics import _scrape, _value


class Workers:
    """Start and stop in-process workers of given builds against one control plane."""

    def __init__(self, redis_url: str, target: str) -> None:
        self.redis_url = redis_url
        self.target = target
        self.running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}
        self.metrics_port = 0

    async def start(self, worker_id: str, build: str, slots: int = 4) -> Worker:
        worker = Worker(
            WorkerSettings(
                insecure_no_auth=True,
                redis_url=self.redis_url,
                control_plane=self.target,
                slots=slots,
                build_id=build,
                worker_id=worker_id,
                heartbeat_interval=0.2,
                drain_timeout=0.2,
            ),
            load_workflows(str(FLOWS)),
        )
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.connected.wait(), 10)
        self.running[worker_id] = (worker, task)
        return worker

    async def drain(self, worker_id: str) -> None:
        """SIGTERM's path: stop taking runs, release the rest at the drain deadline, stop."""
        worker, task = self.running.pop(worker_id)
        worker.request_stop()
        await task


@pytest.fixture
async def plane(redis_url: str) -> AsyncIterator[tuple[Workers, longline.Client]]:
    cp = ControlPlane(
        ControlPlaneSettings(
            insecure_no_auth=True,
            redis_url=redis_url,
            listen="127.0.0.1:0",
            heartbeat_interval=0.2,
            metrics_listen="127.0.0.1:0",
        )
    )
    await cp.start()
    target = f"127.0.0.1:{cp.port}"
    workers = Workers(redis_url, target)
    workers.metrics_port = cp.metrics_port
    async with longline.Client(target) as client:
        yield workers, client
    for worker_id in list(workers.running):
        await workers.drain(worker_id)
    await cp.shutdown()


async def _events(handle: longline.RunHandle) -> list[StoredEvent]:
    """The run's events so far, read from Redis without following."""
    redis = connect(os.environ["LONGLINE_TEST_STORE"])
    try:
        return await Store(redis).events.read_events(handle.run_id, "", 10_000)
    finally:
        await redis.aclose()


async def _started(handle: longline.RunHandle) -> list[tuple[int, str, str]]:
    """(attempt, worker, build) of every RUN_STARTED so far."""
    return [
        (e.attempt, json.loads(e.data_json)["worker"], json.loads(e.data_json)["build"])
        for e in await _events(handle)
        if e.type == "RUN_STARTED"
    ]


async def _holder(handle: longline.RunHandle, attempt: int = 1) -> tuple[str, str]:
    async def started() -> tuple[str, str] | None:
        found = [(w, b) for a, w, b in await _started(handle) if a == attempt]
        return found[0] if found else None

    return await eventually(started, what=f"attempt {attempt} of {handle.run_id} to start")


async def test_new_runs_go_to_the_current_build(
    plane: tuple[Workers, longline.Client],
) -> None:
    workers, client = plane
    await workers.start("a", "v1")
    await workers.start("b", "v2")
    listed = {w.name: w for w in await client.list_workflows()}
    assert listed["echo"].workers == 2 and listed["echo"].builds == ("v1", "v2")
    builds, previous = await client.promote_build("echo", "v1")
    assert previous == "" and builds.current_build_id == "v1"
    first = [await client.start("echo", n) for n in range(6)]
    assert [await h.result() for h in first] == list(range(6))
    assert {(await _holder(h))[1] for h in first} == {"v1"}

    _, previous = await client.promote_build("echo", "v2")
    assert previous == "v1"
    second = [await client.start("echo", n) for n in range(6)]
    assert [await h.result() for h in second] == list(range(6))
    assert {(await _holder(h))[1] for h in second} == {"v2"}


async def test_a_run_stays_on_its_build_while_it_has_workers_then_moves_on(
    counters: aioredis.Redis, plane: tuple[Workers, longline.Client], redis: aioredis.Redis
) -> None:
    workers, client = plane
    await workers.start("v1-a", "v1", slots=1)
    await client.promote_build("five_steps", "v1")
    handle = await client.start("five_steps", {"delay": 0.3})
    assert await _holder(handle) == ("v1-a", "v1")
    await workers.start("v1-b", "v1", slots=1)
    await workers.start("v2-a", "v2", slots=4)
    await client.promote_build("five_steps", "v2")

    await workers.drain("v1-a")  # released at its 0.2 s drain deadline
    assert await _holder(handle, 2) == ("v1-b", "v1"), "pinned: v1 still has a worker"
    await workers.drain("v1-b")
    assert await _holder(handle, 3) == ("v2-a", "v2"), "moved: no worker of v1 left"
    assert await handle.result() == {"steps": 5}

    events = [e async for e in handle.events()]
    moved = [e.message for e in events if e.type is EventType.STATUS and "moved" in e.message]
    assert moved == ["moved from build v1 to build v2: no worker of build v1 is left to run it"]
    counts = await counters.hgetall(f"test:steps:{handle.run_id}")
    finished = {
        e.data["step"].split("#")[1]
        for e in events
        if e.type is EventType.COMPONENT_FINISHED and e.attempt < 3
    }
    for n in finished:
        assert counts[n] == "1", f"finished step {n} ran again"
    (state,) = await client.list_builds("five_steps")
    assert state.unserved_runs == 0
    assert all(b.queued_runs == b.running_runs == 0 for b in state.builds)


async def test_with_policy_never_a_run_waits_for_its_build_and_is_reported(
    plane: tuple[Workers, longline.Client],
) -> None:
    workers, client = plane
    await workers.start("v1-a", "v1", slots=1)
    await client.promote_build("five_steps", "v1")
    handle = await client.start("five_steps", {"delay": 0.3})
    await _holder(handle)
    await workers.start("v2-a", "v2")
    builds, _ = await client.promote_build("five_steps", "v2", policy="NEVER")
    assert builds.policy == "NEVER"
    await workers.drain("v1-a")

    async def reported() -> longline.WorkflowBuilds | None:
        (state,) = await client.list_builds("five_steps")
        return state if state.unserved_runs == 1 else None

    state = await eventually(reported, what="the run of v1 to be reported unserved")
    v1 = next(b for b in state.builds if b.build_id == "v1")
    assert (v1.workers, v1.queued_runs, v1.unserved_runs) == (0, 1, 1)
    assert (await handle.describe()).status == "QUEUED"
    assert len(await _started(handle)) == 1, "no other build took it"

    async def exported() -> bool:
        text = await _scrape(workers.metrics_port)
        return _value(text, 'longline_runs_unserved{workflow="five_steps"}') == 1

    await eventually(exported, what="the unserved run in the control plane's metrics")

    await workers.start("v1-c", "v1")  # its build is back: the run goes on there
    assert await _holder(handle, 2) == ("v1-c", "v1")
    assert await handle.result() == {"steps": 5}


async def test_a_build_with_no_workers_is_refused_unless_forced(
    plane: tuple[Workers, longline.Client],
) -> None:
    workers, client = plane
    await workers.start("a", "v1")
    with pytest.raises(longline.FailedPrecondition, match="no live worker of build 'v9'"):
        await client.promote_build("echo", "v9")
    builds, _ = await client.promote_build("echo", "v9", force=True)
    assert builds.current_build_id == "v9"
    handle = await client.start("echo", 1)

    async def reported() -> longline.WorkflowBuilds | None:
        (state,) = await client.list_builds("echo")
        return state if state.unserved_runs == 1 else None

    await eventually(reported, what="the new run to be reported unserved")
    assert (await handle.describe()).status == "QUEUED"
    await workers.start("b", "v9")
    assert await handle.result() == 1
    assert await _holder(handle) == ("b", "v9")


@pytest.mark.parametrize(
    ("request_fields", "code", "reason"),
    [
        ({"workflow": "nope", "build_id": "v1"}, grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND"),
        ({"workflow": "", "build_id": "v1"}, grpc.StatusCode.INVALID_ARGUMENT, "WORKFLOW_REQUIRED"),
        (
            {"workflow": "echo", "build_id": ""},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BUILD_ID",
        ),
        (
            {"workflow": "echo", "build_id": "v1:../x"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BUILD_ID",
        ),
        (
            {"workflow": "echo", "build_id": "v1", "policy": 42},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_POLICY",
        ),
    ],
)
async def test_bad_promotions_get_clear_errors(
    plane: tuple[Workers, longline.Client],
    request_fields: dict[str, object],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    workers, client = plane
    await workers.start("a", "v1")
    async with grpc.aio.insecure_channel(workers.target) as channel:
        stub = builds_pb2_grpc.BuildServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PromoteBuild(builds_pb2.PromoteBuildRequest(**request_fields))  # type: ignore[arg-type]
        assert caught.value.code() == code
        assert error_reason(caught.value) == reason, caught.value.details()
        # the server is fine afterwards
        assert (await stub.ListBuilds(builds_pb2.ListBuildsRequest())).workflows


async def test_a_worker_with_a_bad_build_id_is_turned_away(
    plane: tuple[Workers, longline.Client],
) -> None:
    workers, _ = plane

    async def hello() -> AsyncIterator[worker_pb2.ConnectRequest]:
        yield worker_pb2.ConnectRequest(
            hello=worker_pb2.WorkerHello(worker_id="w", build_id="v 1", slots=1)
        )
        await asyncio.sleep(5)

    async with grpc.aio.insecure_channel(workers.target) as channel:
        call = worker_pb2_grpc.WorkerServiceStub(channel).Connect(hello())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "build id 'v 1' is not valid" in (caught.value.details() or "")
