"""Runs that wait: durable sleeps and inputs, on a real control plane, worker and Redis."""

from __future__ import annotations

import json

import grpc
import pytest
import redis.asyncio as aioredis

import longline
from longline._store import Store, connect, keys
from longline.v1 import runs_pb2
from tests.conftest import eventually
from tests.integration.conftest import Stack


async def _true(value: bool) -> bool:
    return value


async def _events(handle: longline.RunHandle) -> list[longline.Event]:
    return [e async for e in handle.events()]


async def _status(handle: longline.RunHandle, status: str) -> longline.Run | None:
    run = await handle.describe()
    return run if run.status == status else None


async def _steps(counters: aioredis.Redis, run_id: str) -> dict[str, str]:
    return dict(await counters.hgetall(f"test:steps:{run_id}"))


async def test_a_long_sleep_parks_the_run_frees_its_slot_and_resumes_once(
    stack: Stack, counters: aioredis.Redis
) -> None:
    handle = await stack.client.start("sleeper", {"seconds": 2})
    parked = await eventually(lambda: _status(handle, "WAITING"), what="the run to park")
    assert parked.wait is not None and parked.wait.kind == "sleep"
    assert parked.wait.wake_time is not None
    # Parked: no task, no slot, no lease.
    assert stack.worker.running == 0
    result = await handle.result()
    assert result == {"slept": 2, "attempt": 2}
    events = await _events(handle)
    types = [e.type for e in events]
    waiting = [e for e in events if e.type == "RUN_WAITING"]
    assert len(waiting) == 1 and waiting[0].data["kind"] == "sleep"
    assert waiting[0].data["wake_ms"] > 0
    resumed = types.index("RUN_QUEUED", 1)
    assert events[resumed].attempt == 2 and "sleep is over" in events[resumed].message
    assert "RUN_RETRYING" not in types  # parking is not a lost attempt
    # Waking came after the timer: at least the sleep's length after parking.
    assert (events[resumed].time - waiting[0].time).total_seconds() >= 1.9
    progress = [e.data for e in events if e.type == "PROGRESS"]
    assert progress[-1] == {"done": 2.0, "total": 2.0}
    # The step before the sleep ran once; the replay took it from its checkpoint.
    assert await _steps(counters, handle.run_id) == {"0": "1", "1": "1"}
    trace = await handle.trace()
    attempts = [s for s in trace.spans if s.kind == "ATTEMPT"]
    assert [a.status for a in attempts] == ["PARKED", "OK"]
    replayed = {s.step for s in trace.spans if s.status == "REPLAYED"}
    assert {"count_step#1", "@sleep#1"} <= replayed


async def test_a_short_sleep_stays_in_memory(stack: Stack, counters: aioredis.Redis) -> None:
    handle = await stack.client.start("sleeper", {"seconds": 0.2})
    assert await handle.result() == {"slept": 0.2, "attempt": 1}
    types = [e.type for e in await _events(handle)]
    assert "RUN_WAITING" not in types


async def test_an_input_resumes_a_waiting_run_and_is_checked_against_its_schema(
    stack: Stack, counters: aioredis.Redis
) -> None:
    handle = await stack.client.start("approval", {})
    waiting = await eventually(lambda: _status(handle, "WAITING"), what="the run to ask")
    assert waiting.wait is not None
    assert (waiting.wait.kind, waiting.wait.input_name, waiting.wait.wake_time) == (
        "input",
        "approval",
        None,
    )
    assert stack.worker.running == 0
    requested = [e for e in await _stream_until(handle, "RUN_WAITING") if e.type.startswith("IN")]
    assert requested[0].type == "INPUT_REQUESTED"
    assert requested[0].data["prompt"] == "Approve the plan?"
    assert requested[0].data["schema"]["required"] == ["approved"]

    # Against the schema: refused, naming the field; nothing changes.
    with pytest.raises(longline.InvalidArgument) as caught:
        await handle.send_input("approval", {"approved": "yes"})
    assert caught.value.reason == "INPUT_DOES_NOT_MATCH_SCHEMA"
    assert "$.approved" in caught.value.details
    with pytest.raises(longline.InvalidArgument) as caught:
        await handle.send_input("approval", {"approved": True, "extra": 1})
    assert "extra" in caught.value.details
    assert (await handle.describe()).status == "WAITING"

    run = await handle.send_input("approval", {"note": "ok", "approved": True})
    assert run.status in ("QUEUED", "RUNNING", "SUCCEEDED")
    assert await handle.result() == {"answer": {"approved": True, "note": "ok"}}
    # The same payload again (keys in another order): accepted, nothing changes.
    response = await stack.stub.SendInput(
        runs_pb2.SendInputRequest(
            run_id=handle.run_id, name="approval", payload_json='{"approved":true,"note":"ok"}'
        )
    )
    assert response.duplicate and response.run.status == runs_pb2.RUN_STATUS_SUCCEEDED
    # Another payload: refused.
    with pytest.raises(longline.FailedPrecondition) as caught:
        await handle.send_input("approval", {"approved": False})
    assert caught.value.reason == "INPUT_ALREADY_RECEIVED"
    received = [e for e in await _events(handle) if e.type == "INPUT_RECEIVED"]
    assert len(received) == 1
    assert received[0].data == {
        "name": "approval",
        "payload": {"approved": True, "note": "ok"},
        "sender": "",
    }
    assert await _steps(counters, handle.run_id) == {"0": "1", "1": "1"}


async def _stream_until(handle: longline.RunHandle, type: str) -> list[longline.Event]:
    seen = []
    async for event in handle.events():
        seen.append(event)
        if event.type == type:
            break
    return seen


async def test_an_input_sent_before_the_run_asks_is_kept_for_it(
    stack: Stack, counters: aioredis.Redis
) -> None:
    handle = await stack.client.start("approval", {"gate": True})
    await eventually(
        lambda: counters.hget(f"test:steps:{handle.run_id}", "5"), what="the run at the gate"
    )
    run = await handle.send_input("approval", {"approved": True})
    assert run.status == "RUNNING"  # not asked yet: kept
    await counters.set("test:gate", 1)
    assert await handle.result() == {"answer": {"approved": True}}
    types = [e.type for e in await _events(handle)]
    # Taken at once when asked: the run never parked.
    assert "RUN_WAITING" not in types
    assert types.index("INPUT_RECEIVED") < types.index("INPUT_REQUESTED")


async def test_an_early_input_that_fails_the_schema_is_dropped_and_the_run_waits(
    stack: Stack, counters: aioredis.Redis
) -> None:
    handle = await stack.client.start("approval", {"gate": True})
    await eventually(
        lambda: counters.hget(f"test:steps:{handle.run_id}", "5"), what="the run at the gate"
    )
    await handle.send_input("approval", {"approved": "maybe"})  # nothing to check against yet
    with pytest.raises(longline.FailedPrecondition) as caught:  # the first one is kept
        await handle.send_input("approval", {"approved": True})
    assert caught.value.reason == "INPUT_ALREADY_RECEIVED"
    await counters.set("test:gate", 1)
    await eventually(lambda: _status(handle, "WAITING"), what="the run to wait")
    dropped = [e for e in await _stream_until(handle, "RUN_WAITING") if e.type == "STATUS"]
    assert "does not match its schema" in dropped[-1].message
    assert "$.approved" in dropped[-1].message
    await handle.send_input("approval", {"approved": False})
    assert await handle.result() == {"answer": {"approved": False}}


async def test_an_input_timeout_raises_in_the_workflow_and_refuses_late_input(
    stack: Stack,
) -> None:
    handle = await stack.client.start("approval", {"timeout": 1.5})
    waiting = await eventually(lambda: _status(handle, "WAITING"), what="the run to ask")
    assert waiting.wait is not None and waiting.wait.wake_time is not None
    assert await handle.result() == {"timed_out": "approval"}
    with pytest.raises(longline.FailedPrecondition) as caught:
        await handle.send_input("approval", {"approved": True})
    assert caught.value.reason == "INPUT_TIMED_OUT"


async def test_cancelling_a_waiting_run_is_immediate_and_removes_its_timer(
    stack: Stack, redis_url: str
) -> None:
    handle = await stack.client.start("sleeper", {"seconds": 600})
    await eventually(lambda: _status(handle, "WAITING"), what="the run to park")
    n = keys.partition_of(handle.run_id)
    redis = connect(redis_url)
    try:
        assert await redis.zscore(keys.timers_key(n), handle.run_id) is not None
        run = await handle.cancel("no longer needed")
        assert run.status == "CANCELLED"
        assert await redis.zscore(keys.timers_key(n), handle.run_id) is None
        stats = await Store(redis).runs.stats()
        assert stats.by_status.get("WAITING", 0) == 0
        assert stats.by_status["CANCELLED"] >= 1
    finally:
        await redis.aclose()
    with pytest.raises(longline.FailedPrecondition) as caught:
        await handle.send_input("approval", 1)
    assert caught.value.reason == "RUN_ALREADY_ENDED"
    assert [e.type for e in await _events(handle)][-1] == "RUN_CANCELLED"


async def test_waiting_runs_are_listed_by_status(stack: Stack) -> None:
    waiting = await stack.client.start("approval", {})
    done = await stack.client.start("echo", 1)
    await done.result()
    await eventually(lambda: _status(waiting, "WAITING"), what="the run to ask")
    runs, _ = await stack.client.list_runs(status="WAITING")
    assert [r.run_id for r in runs] == [waiting.run_id]
    assert runs[0].wait is not None and runs[0].wait.input_name == "approval"
    await waiting.cancel()


@pytest.mark.parametrize(
    ("run_id", "name", "payload", "code", "reason"),
    [
        ("", "approval", "true", grpc.StatusCode.INVALID_ARGUMENT, "RUN_ID_REQUIRED"),
        ("RUN", "", "true", grpc.StatusCode.INVALID_ARGUMENT, "INPUT_NAME_REQUIRED"),
        ("RUN", "no spaces", "true", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT_NAME"),
        ("RUN", "x" * 200, "true", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT_NAME"),
        ("RUN", "approval", "{not json", grpc.StatusCode.INVALID_ARGUMENT, "INPUT_NOT_JSON"),
        ("RUN", "approval", "NaN", grpc.StatusCode.INVALID_ARGUMENT, "INPUT_NOT_JSON"),
        ("RUN", "approval", "1e400", grpc.StatusCode.INVALID_ARGUMENT, "INPUT_NOT_JSON"),
        ("RUN", "approval", '"\\ud800"', grpc.StatusCode.INVALID_ARGUMENT, "INPUT_NOT_JSON"),
        (
            "RUN",
            "approval",
            "[" * 200 + "]" * 200,
            grpc.StatusCode.INVALID_ARGUMENT,
            "INPUT_NOT_JSON",
        ),
        ("RUN", "approval", "1" * 70_000, grpc.StatusCode.RESOURCE_EXHAUSTED, "INPUT_TOO_LARGE"),
        ("0" * 32, "approval", "true", grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND"),
        ("no-such-run", "approval", "true", grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND"),
    ],
)
async def test_bad_input_gets_the_documented_status(
    stack: Stack,
    run_id: str,
    name: str,
    payload: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    if run_id == "RUN":
        run_id = (await stack.client.start("approval", {})).run_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.SendInput(
            runs_pb2.SendInputRequest(run_id=run_id, name=name, payload_json=payload)
        )
    assert caught.value.code() == code
    assert longline._errors.error_reason(caught.value) == reason
    assert caught.value.details()


async def test_inputs_nobody_asked_for_are_bounded_in_number(stack: Stack) -> None:
    handle = await stack.client.start("sleeper", {"seconds": 600})
    await eventually(lambda: _status(handle, "WAITING"), what="the run to park")
    for i in range(keys.MAX_EARLY_INPUTS):
        await handle.send_input(f"n{i}", {"big": "x" * 1000})
    with pytest.raises(longline.ResourceExhausted) as caught:
        await handle.send_input("one-more", 1)
    assert caught.value.reason == "TOO_MANY_INPUTS"
    await handle.cancel()


@pytest.mark.parametrize("task_group", [False, True])
async def test_a_wait_beside_a_running_step_parks_once_that_step_is_checkpointed(
    stack: Stack, counters: aioredis.Redis, task_group: bool
) -> None:
    handle = await stack.client.start("beside", {"delay": 1.0, "task_group": task_group})
    await eventually(lambda: _requested(handle), what="the request, before the step ends")
    assert (await handle.describe()).status == "RUNNING"  # the step beside it still runs
    await eventually(lambda: _status(handle, "WAITING"), what="the run to park")
    await handle.send_input("go", "now")
    assert await handle.result() == {"step": 7, "answer": "now"}
    # The step beside the wait ran once: it finished and was checkpointed before parking.
    assert await _steps(counters, handle.run_id) == {"7": "1"}


async def _requested(handle: longline.RunHandle) -> bool:
    async for event in handle.events():
        if event.type == "INPUT_REQUESTED":
            return True
        if event.type in ("RUN_WAITING", "RUN_SUCCEEDED"):
            return False
    return False


async def test_a_workflow_tested_alone_gets_its_inputs_from_run_local() -> None:
    from longline.testing import run_local
    from tests import flows

    run = await run_local(flows.approval, {}, inputs={"approval": {"approved": True}})
    assert run.error is None and run.result == {"answer": {"approved": True}}
    assert run.requests[0].prompt == "Approve the plan?"
    run = await run_local(flows.approval, {})
    assert run.result == {"timed_out": "approval"}
    assert json.loads(run.checkpoints["@input:approval"]) == {"timeout": True}


async def _parked_for_input(store: Store, name: str, timeout_ms: int | None) -> str:
    """A run of `flow` claimed by w1 and parked on input `name` (no control plane)."""
    from longline._store import ClaimRequest, RunWriter

    await store.presence.announce("w1", [("flow", "")], 60_000)
    run_id = store.runs.new_run_id()
    await store.runs.create(run_id, "flow", "null", {})
    assert await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3))
    writer = RunWriter(store, run_id, 1, "w1")
    await writer.open()
    code, _ = await writer.request_input(f"@input:{name}", name, "{}", timeout_ms, False)
    assert code == 1
    return run_id


async def test_an_input_after_its_timeout_is_refused_before_the_monitor_wakes_the_run(
    redis_url: str,
) -> None:
    store = Store(connect(redis_url))
    try:
        await store.check_partitions()
        run_id = await _parked_for_input(store, "late", timeout_ms=1)
        await eventually(lambda: _due(store), what="the timeout to pass")
        with pytest.raises(Exception) as caught:  # no monitor runs: only SEND_INPUT can tell
            await store.waits.send_input(run_id, "late", "1", "", _no_check)
        assert getattr(caught.value, "reason", "") == "INPUT_TIMED_OUT"
        record = await store.runs.get(run_id)
        assert (record.status, record.attempt) == ("QUEUED", 2)  # woken, as by its timer
        steps = await store.redis.hgetall(keys.steps_key(run_id))
        assert json.loads(steps["@input:late"]) == {"timeout": True}
    finally:
        await store.aclose()


async def _no_check(request_json: str) -> None:
    return None


async def _all_due(store: Store, *run_ids: str) -> bool:
    now = await store.now_ms()
    for run_id in run_ids:
        due = await store.redis.zscore(keys.timers_key(keys.partition_of(run_id)), run_id)
        if due is None or due > now:
            return False
    return True


async def _due(store: Store) -> bool:
    return (await store.waits.next_wake_ms() or 0) <= await store.now_ms()


async def test_a_record_the_wake_script_refuses_is_put_off_and_the_others_wake(
    redis_url: str,
) -> None:
    store = Store(connect(redis_url))
    try:
        await store.check_partitions()
        broken = await _parked_for_input(store, "a", timeout_ms=1)
        good = await _parked_for_input(store, "b", timeout_ms=1)
        await store.redis.hset(keys.run_key(broken), "wake_ms", "not a number")
        await eventually(lambda: _all_due(store, broken, good), what="both timeouts to pass")
        assert await store.waits.wake_due() == [good]
        n = keys.partition_of(broken)
        later = await store.redis.zscore(keys.timers_key(n), broken)
        assert later is not None and later > await store.now_ms() + 50_000
    finally:
        await store.aclose()


async def test_waits_in_components_side_by_side_park_one_after_the_other(stack: Stack) -> None:
    handle = await stack.client.start("two_approvals", {})
    first = await eventually(lambda: _waiting_for(handle), what="the run to park")
    await handle.send_input(first, f"{first} ok")
    second = await eventually(
        lambda: _waiting_for(handle, other_than=first), what="the run to park for the other"
    )
    await handle.send_input(second, f"{second} ok")
    assert await handle.result() == {"legal": "legal ok", "finance": "finance ok"}


async def _waiting_for(handle: longline.RunHandle, other_than: str = "") -> str:
    run = await handle.describe()
    name = run.wait.input_name if run.wait is not None else ""
    return name if name and name != other_than else ""


async def test_short_sleeps_side_by_side_both_wait_in_memory(stack: Stack) -> None:
    handle = await stack.client.start("two_sleeps", {})
    assert await handle.result() == {"attempt": 1}
