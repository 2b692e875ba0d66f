"""Child runs and ctx.map, on a real control plane, worker and Redis."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

import longline
from longline._cli._render import print_trace
from longline._store import ClaimRequest, RunWriter, Store, connect, keys
from tests.conftest import eventually
from tests.integration.conftest import Stack


async def _events(handle: longline.RunHandle) -> list[longline.Event]:
    return [e async for e in handle.events()]


async def _steps(counters: aioredis.Redis, run_id: str) -> dict[str, str]:
    return dict(await counters.hgetall(f"test:steps:{run_id}"))


async def _end(handle: longline.RunHandle) -> longline.Run:
    """The run once it ended, however it ended."""
    try:
        await handle.result()
    except (longline.RunFailed, longline.RunCancelled) as exc:
        return exc.run
    return await handle.describe()


def _most_at_once(events: list[longline.Event]) -> int:
    """The most child runs started and not ended at once, by the parent's events."""
    running = most = 0
    for e in events:
        if e.type == "CHILD_STARTED":
            running += 1
            most = max(most, running)
        elif e.type == "CHILD_ENDED":
            running -= 1
    return most


async def test_a_child_run_parks_its_parent_and_returns_its_result(
    stack: Stack, counters: aioredis.Redis
) -> None:
    handle = await stack.client.start("parent_of_one", {"i": 3, "delay": 0.5})
    result = await handle.result()
    assert result["child"] == {"i": 3, "double": 6}
    events = await _events(handle)
    started = [e for e in events if e.type == "CHILD_STARTED"]
    ended = [e for e in events if e.type == "CHILD_ENDED"]
    assert len(started) == 1 and len(ended) == 1
    child_id = started[0].data["child"]
    assert ended[0].data == {
        "child": child_id,
        "workflow": "child_item",
        "step": "@child#1",
        "status": "SUCCEEDED",
    }
    # The parent parked while its child ran, and woke once it ended.
    waiting = [e for e in events if e.type == "RUN_WAITING"]
    assert len(waiting) == 1 and waiting[0].data["kind"] == "child"
    assert waiting[0].data["children"] == [child_id]
    # GetRun names the parent; the child ran its step once, the parent its steps once.
    child = await stack.client.get_run(child_id).describe()
    assert child.parent_run_id == handle.run_id and child.status == "SUCCEEDED"
    assert await _steps(counters, child_id) == {"0": "1"}
    assert await _steps(counters, handle.run_id) == {"0": "1", "1": "1"}
    # The trace nests the child's attempt under the span that started it.
    trace = await handle.trace()
    child_span = next(s for s in trace.spans if s.kind == "CHILD_RUN")
    assert child_span.run_id == child_id and child_span.status == "OK"
    under = trace.children(child_span.span_id)
    assert [s.kind for s in under] == ["ATTEMPT"] and under[0].run_id == child_id
    assert any(s.name == "chaos_step" for s in trace.children(under[0].span_id))
    shown = io.StringIO()
    print_trace(trace, shown)
    assert f"⤷ child run {child_id} (child_item)" in shown.getvalue()
    assert "chaos_step#1" in shown.getvalue().split("⤷ child run")[1]
    # A child lives in its parent's partition: one slot.
    assert keys.partition_of(child_id) == keys.partition_of(handle.run_id)


async def test_a_failed_child_raises_child_failed_naming_it(stack: Stack) -> None:
    handle = await stack.client.start("parent_of_one", {"i": 1, "fail": True})
    result = await handle.result()
    assert result["status"] == "FAILED" and "item 1 failed on purpose" in result["error"]
    child = await stack.client.get_run(result["failed"]).describe()
    assert child.status == "FAILED" and child.parent_run_id == handle.run_id


async def test_map_over_a_workflow_keeps_its_limit_and_the_order_of_items(
    stack: Stack, counters: aioredis.Redis
) -> None:
    handle = await stack.client.start("fan_out", {"n": 12, "concurrency": 3, "delay": 0.05})
    result = await handle.result()
    assert result == [{"i": i, "double": 2 * i} for i in range(12)]
    events = await _events(handle)
    assert _most_at_once(events) == 3
    children = [e.data["child"] for e in events if e.type == "CHILD_STARTED"]
    assert len(set(children)) == 12
    for child in children:
        assert await _steps(counters, child) == {"0": "1"}


async def test_map_collects_failures_in_place_or_fails_fast(stack: Stack) -> None:
    handle = await stack.client.start(
        "fan_out", {"n": 5, "concurrency": 5, "fail": [1, 3], "collect": True}
    )
    result = await handle.result()
    assert [("error" in r) for r in result] == [False, True, False, True, False]
    assert "item 3 failed on purpose" in result[3]["error"]
    fast = await stack.client.start("fan_out", {"n": 6, "concurrency": 2, "fail": [0]})
    run = await _end(fast)
    assert run.status == "FAILED" and run.error is not None
    assert run.error.type == "ChildFailed" and "item 0 failed on purpose" in run.error.message


async def test_map_over_a_component_runs_each_item_as_a_step(
    stack: Stack, counters: aioredis.Redis
) -> None:
    handle = await stack.client.start("map_steps", {"n": 9, "concurrency": 3, "delay": 0.05})
    assert await handle.result() == list(range(9))
    events = await _events(handle)
    running = most = 0
    for e in events:
        if e.type == "COMPONENT_STARTED" and e.component == "item_step":
            running += 1
            most = max(most, running)
        elif e.type == "COMPONENT_FINISHED" and e.component == "item_step":
            running -= 1
    assert most == 3
    assert await _steps(counters, handle.run_id) == {str(i): "1" for i in range(9)}


async def test_cancelling_a_parent_cancels_its_children(stack: Stack) -> None:
    handle = await stack.client.start("fan_out", {"n": 4, "concurrency": 2, "delay": 30})

    async def started() -> list[str] | None:
        events = await _events_now(handle)
        ids = [e.data["child"] for e in events if e.type == "CHILD_STARTED"]
        return ids if len(ids) == 2 else None

    children = await eventually(started, what="two children to start")
    await handle.cancel("enough")
    for child in children:
        run = await _end(stack.client.get_run(child))
        assert run.status == "CANCELLED"
    events = await _events(stack.client.get_run(children[0]))
    cancelled = next(e for e in events if e.type == "RUN_CANCELLED")
    assert f"its parent run {handle.run_id} ended CANCELLED" in cancelled.message


async def _events_now(handle: longline.RunHandle) -> list[longline.Event]:
    run = await handle.describe()
    out = []
    async for e in handle.events():
        out.append(e)
        if e.event_id == run.last_event_id:
            break
    return out


async def test_a_parent_that_ends_cancels_its_children_but_detached_ones(stack: Stack) -> None:
    handle = await stack.client.start("starter", {"delay": 1.0})
    ids = await handle.result()
    kept = await _end(stack.client.get_run(ids["kept"]))
    assert kept.status == "CANCELLED"
    cancelled = next(
        e for e in await _events(stack.client.get_run(ids["kept"])) if e.type == "RUN_CANCELLED"
    )
    assert f"its parent run {handle.run_id} ended SUCCEEDED" in cancelled.message
    loose = await _end(stack.client.get_run(ids["detached"]))
    assert loose.status == "SUCCEEDED" and loose.parent_run_id == handle.run_id


async def test_a_child_of_an_unknown_workflow_or_of_bad_input_fails_the_parent_clearly(
    stack: Stack,
) -> None:
    unknown = await _end(await stack.client.start("bad_child", {"what": "unknown"}))
    assert unknown.status == "FAILED" and unknown.error is not None
    assert unknown.error.type == "LookupError"
    assert "workflow 'no_such_workflow' is not known" in unknown.error.message
    bad = await _end(await stack.client.start("bad_child", {"what": "nan"}))
    assert bad.error is not None and bad.error.type == "TypeError"
    assert "the input of child workflow 'child_item' is not JSON" in bad.error.message


@contextlib.asynccontextmanager
async def _parked_parent(
    redis_url: str, children: int
) -> AsyncIterator[tuple[Store, str, list[str]]]:
    """A store, a parent run (attempt 1 on worker w1) that started `children` children of
    `flow` and parked waiting for them, and the children's ids."""
    store = Store(connect(redis_url))
    try:
        await store.presence.announce("w1", [("flow", "")], 60_000)
        parent = (await store.runs.create(store.runs.new_run_id(), "flow", "null", {})).run.run_id
        assert await store.attempts.claim(ClaimRequest(parent, 1, "w1", "cp", 60_000, 1))
        writer = RunWriter(store, parent, 1, "w1")
        await writer.open()
        steps = [f"@child#{i + 1}" for i in range(children)]
        ids = [
            json.loads((await writer.start_child(step, "flow", str(i)))[1])["child"]
            for i, step in enumerate(steps)
        ]
        assert await writer.wait_children("@wait", steps) == (1, {})
        yield store, parent, ids
    finally:
        await store.redis.aclose()


async def test_a_childs_end_that_was_never_recorded_is_found_at_the_check_up(
    redis_url: str,
) -> None:
    """As if a worker of a version before child runs had ended the children: the parent's
    check-up timer finds them ended (or gone), records it, and wakes the parent."""
    async with _parked_parent(redis_url, 2) as (store, parent, (first, second)):
        n = keys.partition_of(parent)
        timer = await store.redis.zscore(keys.timers_key(n), parent)
        assert timer is not None and timer > await store.now_ms() + 9 * 60_000  # the check-up

        async def check_up() -> list[str]:
            await store.redis.zadd(keys.timers_key(n), {parent: 0})
            await store.redis.hset(keys.run_key(parent), "wake_ms", 0)
            return await store.waits.wake([parent])

        # Nothing ended: the check-up is set again, the parent waits on.
        assert await check_up() == []
        assert (await store.runs.get(parent)).status == "WAITING"
        # The first child ends without its end reaching the parent; the second one's record
        # is lost altogether.
        await store.redis.hset(
            keys.run_key(first), mapping={"status": "SUCCEEDED", "result_json": '{"ok": 1}'}
        )
        await store.redis.delete(keys.run_key(second))
        assert await check_up() == [parent]
        steps = await store.redis.hgetall(keys.steps_key(parent))
        assert json.loads(steps["@child#1"]) == {
            "status": "SUCCEEDED",
            "child": first,
            "workflow": "flow",
            "result": {"ok": 1},
        }
        lost = json.loads(steps["@child#2"])
        assert lost["status"] == "FAILED" and lost["error"]["type"] == "ChildLost"
        record = await store.runs.get(parent)
        assert record.status == "QUEUED" and record.attempt == 2


async def test_a_parent_parked_by_a_version_that_kept_no_steps_still_wakes(
    redis_url: str,
) -> None:
    async with _parked_parent(redis_url, 1) as (store, parent, (child,)):
        await store.redis.hdel(keys.run_key(parent), "wait_steps")  # as the older version
        await store.runs.cancel(child, "enough")  # its end: the parent is due
        assert await store.waits.wake([parent]) == [parent]
        assert (await store.runs.get(parent)).status == "QUEUED"
