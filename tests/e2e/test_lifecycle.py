"""Run lifecycle against real subprocesses: sync invocation, idempotency, cancel, resume."""

from __future__ import annotations

import json

import grpc

import longline
from longline._embedded import free_port
from longline.v1 import runs_pb2, runs_pb2_grpc
from tests.procs import Proc, spawn, start_control_plane, start_worker, wait_serving


async def test_run_workflow_idempotency_and_cancel(redis_url: str, procs: list[Proc]) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    health = f"127.0.0.1:{free_port()}"
    worker = await start_worker(redis_url, target, "--slots", "1", "--health-listen", health)
    procs.append(worker)
    await wait_serving(health, worker)  # the worker answers the standard health service
    async with grpc.aio.insecure_channel(target) as channel:
        stub = runs_pb2_grpc.RunServiceStub(channel)
        done = await stub.RunWorkflow(
            runs_pb2.RunWorkflowRequest(workflow="echo", input_json="[1, 2]"), timeout=20
        )
        assert done.run.status == runs_pb2.RUN_STATUS_SUCCEEDED
        assert json.loads(done.run.result_json) == [1, 2]

        early = await stub.RunWorkflow(
            runs_pb2.RunWorkflowRequest(
                workflow="slow", input_json='{"steps": 15, "delay": 0.05}', idempotency_key="once"
            ),
            timeout=0.5,
        )
        assert early.run.status in (runs_pb2.RUN_STATUS_QUEUED, runs_pb2.RUN_STATUS_RUNNING)
        again = await stub.StartRun(
            runs_pb2.StartRunRequest(workflow="slow", input_json="{}", idempotency_key="once")
        )
        assert again.created is False and again.run.run_id == early.run.run_id

    async with longline.Client(target) as client:
        assert await client.get_run(early.run.run_id).result() == {"ticks": 15}
        # the worker's single slot: a long run, cancelled while running, frees it
        long = await client.start("slow", {"steps": 100_000, "delay": 0.01})
        async for event in long.events():
            if event.type is longline.EventType.STATUS:
                break
        await long.cancel()
        events = [e async for e in long.events()]
        assert events[-1].type is longline.EventType.RUN_CANCELLED
        assert await client.run("echo", "slot free") == "slot free"


async def test_events_iterator_resumes_across_a_control_plane_crash(
    redis_url: str, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url, name="cp-before")
    procs.append(cp)
    procs.append(await start_worker(redis_url, target))
    async with longline.Client(target) as client:
        handle = await client.start("slow", {"steps": 60, "delay": 0.03})
        seen: list[longline.Event] = []
        async for event in handle.events():
            seen.append(event)
            if len(seen) == 10:
                cp.kill()  # kill -9 the replica serving the stream
                restarted = spawn(
                    "cp-after", "control-plane", "--listen", target, "--redis", redis_url
                )
                procs.append(restarted)
                await wait_serving(target, restarted)
        assert seen[-1].type is longline.EventType.RUN_SUCCEEDED
        ids = [e.event_id for e in seen]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        replay = [e.event_id async for e in handle.events()]
        assert ids == replay, "an event was missed"
