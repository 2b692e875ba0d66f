"""A worker gives every slot back, however its run's task ends."""

from __future__ import annotations

import asyncio

from longline._store import Store, connect
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.v1 import worker_pb2
from tests.conftest import FLOWS


async def test_a_run_cancelled_before_its_task_starts_frees_its_slot(redis_url: str) -> None:
    """The cancel notice can arrive in the same loop turn as the assignment (the run was
    cancelled just after it was claimed): the task is cancelled before its first step."""
    worker = Worker(
        WorkerSettings(redis_url=redis_url, insecure_no_auth=True, slots=1),
        load_workflows(str(FLOWS)),
    )
    redis = connect(redis_url)
    worker._store = Store(redis)
    outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
    worker._outbox = outbox
    ref = worker_pb2.RunRef(run_id="r1", attempt=1)
    worker._on_assignment(
        worker_pb2.Assignment(run_id="r1", workflow="echo", input_json="1", attempt=1)
    )
    worker._on_cancel(worker_pb2.CancelAssignment(run=ref, reason="cancelled at once"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert worker.running == 0
    sent = [outbox.get_nowait() for _ in range(outbox.qsize())]
    kinds = [m.WhichOneof("message") for m in sent if m is not None]
    assert kinds == ["accepted", "finished"]
    await redis.aclose()


async def test_the_same_assignment_twice_runs_once_and_is_not_given_back(redis_url: str) -> None:
    """A claim sent again after its reply was lost can reach the worker twice (through two
    replicas): the second is acknowledged, not released (which would requeue the run it
    is running)."""
    worker = Worker(
        WorkerSettings(redis_url=redis_url, insecure_no_auth=True, slots=2),
        load_workflows(str(FLOWS)),
    )
    redis = connect(redis_url)
    worker._store = Store(redis)
    outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
    worker._outbox = outbox
    assignment = worker_pb2.Assignment(
        run_id="r2", workflow="slow", input_json='{"steps": 1, "delay": 5}', attempt=1
    )
    worker._on_assignment(assignment)
    worker._on_assignment(assignment)
    assert worker.running == 1
    sent = [outbox.get_nowait() for _ in range(outbox.qsize())]
    assert [m.WhichOneof("message") for m in sent if m is not None] == ["accepted", "accepted"]
    tasks = [running.task for running in worker._running.values()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await redis.aclose()
