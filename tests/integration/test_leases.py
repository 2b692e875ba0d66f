"""Lease expiry and fencing, straight against the Redis scripts both planes share."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import redis.asyncio as aioredis

from longline import LeaseLost
from longline._store import (
    ClaimRequest,
    Expired,
    RunWriter,
    Store,
    connect,
    encode_event,
    keys,
)
from tests.conftest import eventually


async def _expired_run(store: Store, redis: aioredis.Redis, max_attempts: int = 3) -> str:
    await store.presence.announce("w1", [("flow", "")], 60_000)
    await store.runs.create("r1", "flow", "null", {})
    assert await store.attempts.claim(
        ClaimRequest("r1", 1, "w1", "cp", lease_ms=1, max_attempts=max_attempts)
    )

    async def lease_over() -> bool:
        return await store.now_ms() > int(await redis.hget(keys.run_key("r1"), "lease_expires_ms"))

    await eventually(lease_over, what="the 1 ms lease to run out")
    return "r1"


async def test_of_several_replicas_exactly_one_acts_on_an_expiry(
    redis_url: str, redis: aioredis.Redis
) -> None:
    replicas = [Store(connect(redis_url)) for _ in range(4)]
    run_id = await _expired_run(replicas[0], redis)
    outcomes = await asyncio.gather(*(s.attempts.expire_leases(10) for s in replicas))
    assert sum(len(o) for o in outcomes) == 1
    record = await replicas[0].runs.get(run_id)
    assert (record.status, record.attempt) == ("QUEUED", 2)
    events = await replicas[0].events.read_events(run_id, "", 100)
    assert [e.type for e in events] == ["RUN_QUEUED", "RUN_RETRYING"]
    assert "stopped renewing the lease of attempt 1 for 10 s" in events[1].message
    for s in replicas:
        await s.redis.aclose()


async def test_the_last_allowed_loss_fails_the_run_saying_why(
    redis_url: str, redis: aioredis.Redis
) -> None:
    store = Store(connect(redis_url))
    run_id = await _expired_run(store, redis, max_attempts=1)
    assert await store.attempts.expire_leases(10) == [Expired(run_id, "failed")]
    record = await store.runs.get(run_id)
    assert record.status == "FAILED" and record.error_type == "AttemptsExhausted"
    assert record.error_message.startswith("gave up after 1 lost attempts (max_attempts 1)")
    assert await redis.zscore(keys.leases_key(keys.partition_of(run_id)), run_id) is None
    await store.redis.aclose()


async def test_a_write_of_an_attempt_that_lost_its_lease_is_refused(
    redis_url: str, redis: aioredis.Redis
) -> None:
    store = Store(connect(redis_url))
    run_id = await _expired_run(store, redis)
    zombie = RunWriter(store, run_id, 1, "w1")
    await store.attempts.expire_leases(10)
    with pytest.raises(LeaseLost):
        await zombie.append([encode_event("STATUS", 1, "still here?")])
    with pytest.raises(LeaseLost):
        await zombie.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    assert [e.type for e in await store.events.read_events(run_id, "", 10)] == [
        "RUN_QUEUED",
        "RUN_RETRYING",
    ]
    await store.redis.aclose()


async def test_a_retried_write_is_applied_once(redis_url: str, redis: aioredis.Redis) -> None:
    store = Store(connect(redis_url))
    await store.presence.announce("w1", [("flow", "")], 60_000)
    await store.runs.create("r2", "flow", "null", {})
    await store.attempts.claim(ClaimRequest("r2", 1, "w1", "cp", lease_ms=10_000, max_attempts=3))
    fields = encode_event("OUTPUT", 1, "chunk")
    args = ["1@w1", 1, "", "", 1, len(fields), *fields]  # attempt 1 on w1, sequence 1
    first = await store.attempts._append(
        keys=[keys.run_key("r2"), keys.events_key("r2"), keys.steps_key("r2")], args=args
    )
    again = await store.attempts._append(
        keys=[keys.run_key("r2"), keys.events_key("r2"), keys.steps_key("r2")], args=args
    )
    assert len(first) == 1 and again == []  # the reply was lost; the retry is a no-op
    events = await store.events.read_events("r2", "", 10)
    assert [e.type for e in events] == ["RUN_QUEUED", "OUTPUT"]
    await store.redis.aclose()


async def test_a_claim_lost_in_a_failover_does_not_let_two_workers_hold_one_attempt(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A failover loses w1's claim (the run is QUEUED at attempt 1 again) and w2 claims the
    same attempt: only w2's writes land; w1, which still runs it, is refused."""
    store = Store(connect(redis_url))
    await store.presence.announce("w1", [("flow", "")], 60_000)
    await store.runs.create("r3", "flow", "null", {})
    assert await store.attempts.claim(
        ClaimRequest("r3", 1, "w1", "cp", lease_ms=10_000, max_attempts=3)
    )
    w1 = RunWriter(store, "r3", 1, "w1")
    await redis.hset(keys.run_key("r3"), mapping={"status": "QUEUED", "worker_id": ""})
    assert await store.attempts.claim(
        ClaimRequest("r3", 1, "w2", "cp", lease_ms=10_000, max_attempts=3)
    )
    w2 = RunWriter(store, "r3", 1, "w2")
    with pytest.raises(LeaseLost):
        await w1.append([encode_event("STATUS", 1, "w1 here")])
    assert await store.attempts.heartbeat([("r3", 1)], 10_000, "w1") == [False]
    assert not await store.attempts.requeue("r3", 1, "w1 gives it back", "w1")
    await w2.append([encode_event("STATUS", 1, "w2 here")])
    assert await store.attempts.heartbeat([("r3", 1)], 10_000, "w2") == [True]
    await w2.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    messages = [e.message for e in await store.events.read_events("r3", "", 10)]
    assert "w2 here" in messages and "w1 here" not in messages
    await store.redis.aclose()


async def test_a_claim_retried_after_its_reply_was_lost_is_claimed_again(redis_url: str) -> None:
    """The dispatcher sends a claim, the reply is lost (a timeout, a cluster connection
    dropped): it cannot tell whether it landed and tries again. The same attempt for the same
    worker, not started yet, is claimed again, so the assignment is sent; before, the retry
    found the run RUNNING, dropped it, and the run sat unrun until its lease ran out."""
    store = Store(connect(redis_url))
    try:
        await store.presence.announce("w1", [("flow", "")], 60_000)
        await store.runs.create("r9", "flow", '{"x": 1}', {})
        first = ClaimRequest("r9", 1, "w1", "cp", lease_ms=10_000, max_attempts=3)
        assert await store.attempts.claim(first)
        again = await store.attempts.claim(first)
        assert again is not None and again.input_json == '{"x": 1}'
        # Another worker does not get it; nor does the same worker once it has written.
        assert await store.attempts.claim(dataclasses.replace(first, worker_id="w2")) is None
        await RunWriter(store, "r9", 1, "w1").append([encode_event("STATUS", 1, "started")])
        assert await store.attempts.claim(first) is None
    finally:
        await store.redis.aclose()
