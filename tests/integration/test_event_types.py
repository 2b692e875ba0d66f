"""Only lifecycle code writes lifecycle events: workflow code, and a worker's writes, cannot."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from longline._store import ClaimRequest, RunWriter, Store, connect, encode_event, keys
from tests.integration.conftest import Stack


async def test_workflow_code_cannot_write_lifecycle_events(stack: Stack) -> None:
    handle = await stack.client.start("forger", None)
    refused = await handle.result()
    assert [r.split(":")[0] for r in refused] == [
        "RUN_SUCCEEDED",
        "RUN_CANCELLED",
        "RUN_STARTED",
        "NOT_A_TYPE",
    ]
    events = [e async for e in handle.events()]
    assert [e.type.name for e in events if e.type.terminal] == ["RUN_SUCCEEDED"]
    assert events[-1].type.name == "RUN_SUCCEEDED"
    assert not [e for e in events if e.message == "forged"]


async def _claimed(store: Store, run_id: str) -> RunWriter:
    await store.presence.announce("w1", [("flow", "")], 60_000)
    await store.runs.create(run_id, "flow", "null", {})
    assert await store.attempts.claim(
        ClaimRequest(run_id, 1, "w1", "cp", lease_ms=10_000, max_attempts=3)
    )
    return RunWriter(store, run_id, 1, "w1")


async def test_the_append_script_refuses_what_a_worker_may_not_write(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Even a worker that skips the SDK's checks cannot end a run by appending an event."""
    store = Store(connect(redis_url))
    writer = await _claimed(store, "r1")
    await writer.append([encode_event("RUN_STARTED", 1, "first write")])
    for kind in ("RUN_SUCCEEDED", "RUN_FAILED", "RUN_CANCELLED", "RUN_RETRYING", "RUN_QUEUED"):
        with pytest.raises(ValueError, match="may not write"):
            await writer.append([encode_event(kind, 1, "forged")])
    with pytest.raises(ValueError, match="RUN_STARTED"):  # only as the attempt's first write
        await writer.append([encode_event("RUN_STARTED", 1, "again")])
    # A batch with one forged event writes nothing at all.
    with pytest.raises(ValueError):
        await writer.append(
            [encode_event("STATUS", 1, "fine"), encode_event("RUN_SUCCEEDED", 1, "forged")]
        )
    with pytest.raises(ResponseError, match="EVENTTYPE"):
        await store.attempts._finish(
            keys=[keys.run_key("r1"), keys.events_key("r1"), keys.leases_key(0)]
            + [keys.steps_key("r1"), keys.run_key("r1"), *keys.stats_keys(0)],
            args=["1@w1", 99, "CANCELLED", "", "", "", "", *encode_event("RUN_CANCELLED", 1)],
        )
    types = [e.type for e in await store.events.read_events("r1", "", 100)]
    assert types == ["RUN_QUEUED", "RUN_STARTED"]
    assert await redis.hget(keys.run_key("r1"), "status") == "RUNNING"
    # The finish writes the terminal event that matches the status, whatever it was given.
    await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_FAILED", 1, "x"))
    assert (await store.events.read_events("r1", "", 100))[-1].type == "RUN_SUCCEEDED"
    await store.redis.aclose()


async def test_an_event_cannot_carry_a_second_type_field(redis_url: str) -> None:
    """The last value of a repeated field wins when an event is read: a STATUS event with a
    second 't' would read as RUN_SUCCEEDED. Repeated and unknown fields are refused."""
    store = Store(connect(redis_url))
    writer = await _claimed(store, "r2")
    with pytest.raises(ValueError, match="repeated"):
        await writer.append([[*encode_event("STATUS", 1, "x"), "t", "RUN_SUCCEEDED"]])
    with pytest.raises(ValueError, match="repeated"):
        await writer.append([[*encode_event("STATUS", 1, "x"), "zz", "?"]])
    with pytest.raises(ValueError, match="repeated"):
        await writer.finish("SUCCEEDED", event=[*encode_event("RUN_SUCCEEDED", 1), "t", "x"])
    assert [e.type for e in await store.events.read_events("r2", "", 10)] == ["RUN_QUEUED"]
    await store.redis.aclose()
