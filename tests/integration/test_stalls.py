"""Assignments that do not arrive, workers that go quiet, and what a worker may give back.

A "mute worker" here is a real WorkerService.Connect stream opened by the test that says
hello and then nothing: what a stalled process (SIGSTOP, a blocked event loop) or a
half-open connection looks like from the control plane.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

import longline
from longline._store import Store, connect, keys
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from longline.v1 import worker_pb2, worker_pb2_grpc
from tests.conftest import FLOWS, eventually

EventType = longline.EventType


class MuteWorker:
    """A worker's stream that says hello and never answers anything."""

    def __init__(self, target: str, worker_id: str, workflows: list[str], **hello: object):
        self.target = target
        self.worker_id = worker_id
        self.workflows = workflows
        self.hello = hello
        self.received: list[worker_pb2.ConnectResponse] = []
        self.outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    async def _requests(self) -> AsyncIterator[worker_pb2.ConnectRequest]:
        yield worker_pb2.ConnectRequest(
            hello=worker_pb2.WorkerHello(
                worker_id=self.worker_id,
                slots=8,
                workflows=[worker_pb2.WorkflowInfo(name=n) for n in self.workflows],
                **self.hello,  # type: ignore[arg-type]
            )
        )
        while (message := await self.outbox.get()) is not None:
            yield message

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target)
        call = worker_pb2_grpc.WorkerServiceStub(self._channel).Connect(self._requests())

        async def read() -> None:
            async for response in call:
                self.received.append(response)

        task = self._task = asyncio.create_task(read())
        await eventually(lambda: _true(bool(self.received) or task.done()), what="the welcome")
        if task.done():
            task.result()  # raises why the stream was refused

    def assignments(self) -> list[worker_pb2.Assignment]:
        return [r.assignment for r in self.received if r.HasField("assignment")]

    async def close(self) -> None:
        self.outbox.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
        if self._channel is not None:
            await self._channel.close()


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def cp(redis_url: str) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(
        ControlPlaneSettings(
            insecure_no_auth=True,
            redis_url=redis_url,
            listen="127.0.0.1:0",
            lease_timeout=30,  # long: only the acknowledgement can take a run back here
            heartbeat_interval=0.5,
            ack_timeout=1,
        )
    )
    await plane.start()
    yield plane
    await plane.shutdown()


def _worker(target: str, redis_url: str, worker_id: str) -> Worker:
    return Worker(
        WorkerSettings(
            insecure_no_auth=True,
            redis_url=redis_url,
            control_plane=target,
            worker_id=worker_id,
            slots=2,
            drain_timeout=1,
            heartbeat_interval=0.5,
        ),
        load_workflows(str(FLOWS)),
    )


async def test_an_unacknowledged_assignment_goes_elsewhere_without_costing_an_attempt(
    cp: ControlPlane, redis_url: str, redis: aioredis.Redis
) -> None:
    target = f"127.0.0.1:{cp.port}"
    mute = MuteWorker(target, "mute", ["echo"])
    await mute.start()
    try:
        async with longline.Client(target) as client:
            handle = await client.start("echo", {"hi": 1})
            # The only worker gets it, and never says it has it.
            await eventually(lambda: _true(bool(mute.assignments())), what="the assignment")
            run = await eventually(
                lambda: _requeued(client, handle.run_id), what="the run taken back"
            )
            assert run.status is longline.RunStatus.QUEUED and run.attempt == 2
            assert await redis.hget(keys.run_key(handle.run_id), "lost") == "0"
            # A healthy worker comes: the run ends there; the mute one gets nothing more.
            worker = _worker(target, redis_url, "healthy")
            task = asyncio.create_task(worker.run())
            try:
                assert await asyncio.wait_for(handle.result(), 20) == {"hi": 1}
                second = await client.start("echo", 2)
                assert await asyncio.wait_for(second.result(), 20) == 2
            finally:
                worker.request_stop()
                await task
            assert [a.run_id for a in mute.assignments()] == [handle.run_id]
            events = [e async for e in handle.events()]
            retrying = [e for e in events if e.type is EventType.RUN_RETRYING]
            assert len(retrying) == 1 and "did not acknowledge" in retrying[0].message
            assert len([e for e in events if e.type.terminal]) == 1
            assert await redis.hget(keys.run_key(handle.run_id), "worker_id") == "healthy"
    finally:
        await mute.close()


@pytest.mark.single_redis  # counts the control plane's connections on one server
async def test_a_stopping_control_plane_gives_back_what_its_workers_never_acknowledged(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A rolling update stops a control plane while a worker's assignment is on its way.
    Its stream ends, and the run the worker never acknowledged goes back to the queue
    before shutdown() returns, on the control plane's own connections: not left for its
    lease to run out, nor given back by a task outliving the shutdown on a connection
    opened after the control plane closed its clients (a socket nobody closed)."""
    settings = ControlPlaneSettings(
        insecure_no_auth=True,
        redis_url=redis_url,
        listen="127.0.0.1:0",
        lease_timeout=120,  # neither the lease nor the acknowledgement gives it back here
        ack_timeout=60,
        heartbeat_interval=0.5,
        shutdown_grace=0.5,  # the mute worker's stream never ends by itself
    )
    plane = ControlPlane(settings)
    await plane.start()
    mute = MuteWorker(f"127.0.0.1:{plane.port}", "mute", ["echo"])
    await mute.start()
    try:
        async with longline.Client(f"127.0.0.1:{plane.port}") as client:
            handle = await client.start("echo", {"hi": 1})
            await eventually(lambda: _true(bool(mute.assignments())), what="the assignment")
        await plane.shutdown()
        run = await redis.hgetall(keys.run_key(handle.run_id))
        assert (run["status"], run["attempt"], run["lost"]) == ("QUEUED", "2", "0")
        names = [c.get("name", "") for c in await redis.client_list()]
        assert not [n for n in names if n.startswith(f"longline-{settings.replica_id}")]
    finally:
        await mute.close()
        await plane.shutdown()


async def _requeued(client: longline.Client, run_id: str) -> longline.Run | None:
    run = await client.get_run(run_id).describe()
    return run if run.attempt >= 2 else None


async def test_a_worker_whose_presence_ran_out_is_not_chosen(
    cp: ControlPlane, redis_url: str
) -> None:
    """A mute worker never heartbeats: once its presence (five heartbeats) runs out it is
    passed over even before anything was assigned to it, though it has the most slots."""
    target = f"127.0.0.1:{cp.port}"
    mute = MuteWorker(target, "mute", ["echo"])
    await mute.start()
    try:
        async with longline.Client(target) as client:

            async def gone() -> bool:
                rows = {w.name: w.workers for w in await client.list_workflows()}
                return rows.get("echo", 0) == 0

            await eventually(gone, what="the mute worker's presence to run out")
            worker = _worker(target, redis_url, "healthy")
            task = asyncio.create_task(worker.run())
            try:
                for n in range(5):
                    assert await asyncio.wait_for(client.run("echo", n), 20) == n
            finally:
                worker.request_stop()
                await task
            assert mute.assignments() == []
    finally:
        await mute.close()


async def test_a_worker_can_only_give_back_runs_it_holds(
    cp: ControlPlane, redis_url: str, redis: aioredis.Redis
) -> None:
    """hello.running and released of a run the worker does not hold move nothing."""
    target = f"127.0.0.1:{cp.port}"
    worker = _worker(target, redis_url, "holder")
    task = asyncio.create_task(worker.run())
    mute: MuteWorker | None = None
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        async with longline.Client(target) as client:
            handle = await client.start("slow", {"steps": 40, "delay": 0.05})
            await eventually(
                lambda: _status(redis, handle.run_id, "RUNNING"), what="the run to start"
            )
            ref = worker_pb2.RunRef(run_id=handle.run_id, attempt=1)
            mute = MuteWorker(target, "thief", ["slow"], running=[ref])
            await mute.start()
            mute.outbox.put_nowait(
                worker_pb2.ConnectRequest(released=worker_pb2.WorkerReleased(run=ref, reason="x"))
            )
            assert await asyncio.wait_for(handle.result(), 30) == {"ticks": 40}
            events = [e async for e in handle.events()]
            assert not [e for e in events if e.type is EventType.RUN_RETRYING]
            assert {e.attempt for e in events} == {1}
    finally:
        if mute is not None:
            await mute.close()
        worker.request_stop()
        await task


async def _status(redis: aioredis.Redis, run_id: str, status: str) -> bool:
    return bool(await redis.hget(keys.run_key(run_id), "status") == status)


async def test_a_workflow_name_with_a_tab_is_refused_where_workers_announce_it(
    cp: ControlPlane,
) -> None:
    mute = MuteWorker(f"127.0.0.1:{cp.port}", "bad", ["a\tb"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mute.start()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workflow name" in (refused.value.details() or "")
    await mute.close()


async def test_a_newer_attempt_replaces_the_stale_task_instead_of_being_released(
    cp: ControlPlane, redis_url: str, redis: aioredis.Redis
) -> None:
    """The run moved on (its lease ran out while the worker was slow) and its next attempt
    comes back to the same worker: the stale task stops and the new attempt runs there.
    Before, the assignment was released back, and back again, a RUN_RETRYING each time."""
    target = f"127.0.0.1:{cp.port}"
    worker = _worker(target, redis_url, "w1")
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        async with longline.Client(target) as client:
            handle = await client.start("slow", {"steps": 60, "delay": 0.05})
            await eventually(lambda: _status(redis, handle.run_id, "RUNNING"), what="a start")

            async def received() -> bool:  # claimed (RUNNING) a moment before it arrives
                return handle.run_id in worker._running

            await eventually(received, what="the assignment to reach the worker")
            stale = worker._running[handle.run_id]
            # As the lease monitor would after a lease ran out: the next attempt is queued,
            # and only this worker is there to take it.
            store = Store(connect(redis_url))
            try:
                assert await store.attempts.requeue(handle.run_id, 1, "test", "w1")
            finally:
                await store.redis.aclose()
            assert await asyncio.wait_for(handle.result(), 30) == {"ticks": 60}
            assert stale.task.cancelled() or stale.task.done()
            events = [e async for e in handle.events()]
            assert [e.attempt for e in events if e.type is EventType.RUN_RETRYING] == [2]
            assert [e for e in events if e.type.terminal][0].attempt == 2
            assert await redis.hget(keys.run_key(handle.run_id), "worker_id") == "w1"
    finally:
        worker.request_stop()
        await task
