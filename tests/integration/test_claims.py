"""CLAIM_RUN writes an attempt's RUN_STARTED for a worker of protocol 1 (a span id given),
once, bounded: a run resumed after many steps has its worker write it, as before."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from longline._errors import LeaseLost
from longline._store import Claimed, ClaimRequest, RunWriter, Store, connect, encode_event, keys
from longline._store._scripts import CLAIM_STARTS_UP_TO


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store(connect(redis_url))
    yield s
    await s.redis.aclose()


async def _queued(store: Store, steps: dict[str, str]) -> str:
    await store.presence.announce("w1", [("flow", "")], 60_000)
    run_id = store.runs.new_run_id()
    await store.runs.create(run_id, "flow", "null", {}, tenant="t1")
    if steps:
        await store.redis.hset(keys.steps_key(run_id), mapping=steps)
    return run_id


async def _started(store: Store, run_id: str) -> list[dict[str, str]]:
    events = await store.events.read_events(run_id, "", 100)
    return [
        {"message": e.message, "data": e.data_json, "span": e.span_id}
        for e in events
        if e.type == "RUN_STARTED"
    ]


async def test_the_claim_writes_run_started_once_with_the_steps_it_resumes_after(
    store: Store,
) -> None:
    steps = {
        "b.step#1": "1",
        "a.step#1": "2",
        "@child#1": "{}",
        "@map#1/0": "{}",
        "x/@map#2/3": "{}",
    }
    run_id = await _queued(store, steps)
    request = ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3, "", "abcdef0123456789")
    claimed = await store.attempts.claim(request)
    assert isinstance(claimed, Claimed)
    assert (claimed.span_id, claimed.tenant, claimed.checkpoints) == ("abcdef0123456789", "t1", 5)
    again = await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3, "", "ffff"))
    assert again is not None and again.span_id == "abcdef0123456789"  # the span written
    (started,) = await _started(store, run_id)  # once, though claimed twice
    assert started["span"] == "abcdef0123456789"
    assert started["message"] == "attempt 1 started on worker w1, resuming after 5 finished steps"
    # Child runs' starts are left out, as sdk._context.is_child_step tells them apart.
    assert json.loads(started["data"]) == {
        "worker": "w1",
        "build": "",
        "checkpoints": ["a.step#1", "b.step#1"],
    }


async def test_a_run_with_many_steps_has_its_worker_write_run_started(store: Store) -> None:
    many = {f"s#{i}": "1" for i in range(CLAIM_STARTS_UP_TO + 1)}
    run_id = await _queued(store, many)
    claimed = await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3, "", "ab"))
    assert claimed is not None and claimed.span_id == ""  # the worker writes it
    assert await _started(store, run_id) == []


async def test_a_protocol_0_claim_writes_no_run_started(store: Store) -> None:
    run_id = await _queued(store, {})
    claimed = await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3))
    assert claimed is not None and claimed.span_id == ""
    assert await _started(store, run_id) == []


async def test_a_worker_may_not_write_a_second_run_started(store: Store) -> None:
    """Where the claim wrote RUN_STARTED, the worker's own is refused before anything is
    written (one RUN_STARTED per attempt); where it did not, the worker writes it."""
    mine = await _queued(store, {})
    await store.attempts.claim(ClaimRequest(mine, 1, "w1", "cp", 60_000, 3, "", "ab"))
    with pytest.raises(ValueError, match="RUN_STARTED"):
        await RunWriter(store, mine, 1, "w1").append([encode_event("RUN_STARTED", 1, "again")])
    assert len(await _started(store, mine)) == 1
    theirs = await _queued(store, {})
    await store.attempts.claim(ClaimRequest(theirs, 1, "w1", "cp", 60_000, 3))
    await RunWriter(store, theirs, 1, "w1").append([encode_event("RUN_STARTED", 1, "mine")])
    assert [s["message"] for s in await _started(store, theirs)] == ["mine"]


async def test_a_start_the_claim_wrote_for_another_holder_does_not_bar_the_worker(
    store: Store,
) -> None:
    """The claim's RUN_STARTED bars only the holder it was written for: an attempt claimed
    later with no span (a control plane of an older version in a rolling deploy, or a run of
    many checkpoints) has its worker write RUN_STARTED, and a worker whose attempt moved on
    meets LeaseLost, not a refused event type."""
    run_id = await _queued(store, {})
    await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3, "", "ab"))
    assert await store.attempts.take_back(run_id, 1, "never acknowledged", "w1")
    # An older control plane's claim: it leaves attempt_span as it found it.
    await store.redis.hset(keys.run_key(run_id), "attempt_span", "1@w1 ab")
    await store.attempts.claim(ClaimRequest(run_id, 2, "w2", "cp", 60_000, 3))
    await store.redis.hset(keys.run_key(run_id), "attempt_span", "1@w1 ab")
    await RunWriter(store, run_id, 2, "w2").append([encode_event("RUN_STARTED", 2, "w2's")])
    assert [s["message"] for s in await _started(store, run_id)][-1] == "w2's"
    with pytest.raises(LeaseLost):  # attempt 1's worker, late
        await RunWriter(store, run_id, 1, "w1").append([encode_event("RUN_STARTED", 1, "late")])
