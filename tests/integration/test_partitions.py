"""Partitions against a real Redis: every script runs with the keys of one slot, listings
merge the partitions in order, and the partition count is checked at start-up."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from longline._store import (
    Claimed,
    ClaimRequest,
    EventFeed,
    FailedPreconditionError,
    QueueEntry,
    Queues,
    RedisError,
    RunWriter,
    Store,
    TenantLimits,
    Tick,
    WrongBuild,
    _fanout,
    _scripts,
    connect,
    encode_event,
    keys,
)
from longline._store._fanout import Fanout, sharded
from longline._store._fanout import Message as FanoutMessage
from longline.control_plane._hub import EventHub
from tests.cluster import NodeView, RedisCluster, parse_nodes
from tests.conftest import SCRIPTS_RUN, eventually

URLS: dict[int, str] = {}  # a store's Redis URL

# Each test runs on a single Redis and on the cluster by its own parameter: the
# --redis-cluster pass need not run them again.
pytestmark = pytest.mark.single_redis


@pytest.fixture(params=["single", "cluster"])
async def store(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A store of 8 partitions on the test's Redis, and on the session's Redis Cluster of
    3 masters (where a script whose keys span slots fails with CROSSSLOT)."""
    url = redis_url
    if request.param == "cluster" and not redis_url.startswith("redis+cluster://"):
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster.longline_url
    s = Store(connect(url), partitions=8)
    URLS[id(s)] = url
    await s.check_partitions()
    await s.presence.announce("w1", [("flow", ""), ("other", "")], 60_000)
    yield s
    await s.redis.aclose()


async def _no_check(request_json: str) -> None:
    return None


async def test_every_script_of_a_run_runs_with_keys_in_its_partition_slot(store: Store) -> None:
    """Each script of `_scripts` runs here at least once; the session's check (conftest)
    fails the test if any call's KEYS span slots."""
    scripts = [
        getattr(_scripts, name)
        for name in dir(_scripts)
        if name.isupper()
        and not name.startswith("_")
        and isinstance(getattr(_scripts, name), str)
        and "redis.call" in getattr(_scripts, name)
    ]
    assert len(scripts) == 19
    for text in scripts:
        SCRIPTS_RUN.pop(text, None)
    limits = TenantLimits(max_queued=100, start_rate=100, start_burst=100)
    runs = [
        await store.runs.create(
            store.runs.new_run_id(f"key-{i}", "alice"),
            "flow",
            "null",
            {},
            idempotency_key=f"key-{i}",
            tenant="alice",
            limits=limits,
            retention_ms=60_000,
        )
        for i in range(8)
    ]
    ids = [c.run.run_id for c in runs]
    assert len({keys.partition_of(i) for i in ids}) > 1, "the runs spread over partitions"
    claim = [ClaimRequest(i, 1, "w1", "cp", 60_000, 1) for i in ids]
    assert all(await store.attempts.claim_many(claim))
    writer = RunWriter(store, ids[0], 1, "w1")
    await writer.open()
    await writer.append([encode_event("STATUS", 1, "hi")], ("step", "1"))
    assert await store.attempts.heartbeat([(i, 1) for i in ids], 60_000, "w1") == [True] * 8
    await writer.finish("SUCCEEDED", result_json="1", event=["a", "1"])
    await store.runs.cancel(ids[1], "enough")
    assert await store.attempts.requeue(ids[2], 1, "draining", "w1")
    await store.attempts.take_back(ids[3], 1, "never acknowledged", "w1")
    late = ClaimRequest(ids[4], 1, "w1", "cp", 1, 1)
    await store.redis.hset(keys.run_key(ids[4]), "status", "QUEUED")  # claimed again, 1 ms
    await store.attempts.claim(late)
    await asyncio.sleep(0.01)
    assert [e.outcome for e in await store.attempts.expire_leases(1)] == ["failed"]
    queues = Queues(store.redis, store.redis, "cp", store.partitions)
    entry = QueueEntry(
        keys.queue_key(keys.partition_of(ids[5]), "flow"), "flow", "", ids[5], 1, "1-0"
    )
    assert await queues.hand_back([entry]) == [True]
    # Waiting: a sleep parks one run and its timer wakes it; another waits for an input.
    sleeper = RunWriter(store, ids[6], 1, "w1")
    assert await sleeper.sleep("@sleep#1", delay_ms=1, until_ms=None, park_after_ms=0) == (
        True,
        1,
    )
    asker = RunWriter(store, ids[7], 1, "w1")
    code, _ = await asker.request_input("@input:ok", "ok", "{}", None, False)
    assert code == 1  # parked until it comes
    assert not (await store.waits.send_input(ids[7], "ok", "true", "", _no_check)).duplicate
    await asyncio.sleep(0.01)
    assert await store.waits.wake_due() == [ids[6]]
    # Children: a parent starts two and parks until one ends; it ends with the other still
    # running, which is cancelled by policy, and that clears it from the orphans.
    parent = (await store.runs.create(store.runs.new_run_id(), "flow", "null", {})).run.run_id
    assert await store.attempts.claim(ClaimRequest(parent, 1, "w1", "cp", 60_000, 1))
    mother = RunWriter(store, parent, 1, "w1")
    await mother.open()
    _, first = await mother.start_child("@child#1", "flow", "1")
    _, second = await mother.start_child("@child#2", "flow", "2")
    assert await mother.wait_children("@wait:@child#1", ["@child#1"]) == (1, {})
    await store.runs.cancel(json.loads(first)["child"], "enough")  # the parent is due
    assert await store.waits.wake([parent]) == [parent]
    assert await store.attempts.claim(ClaimRequest(parent, 2, "w1", "cp", 60_000, 1))
    again = RunWriter(store, parent, 2, "w1")
    await again.open()
    await again.finish("SUCCEEDED", result_json="1", event=["a", "2"])
    cancelled = await store.children.cancel_orphans()
    assert [c.run_id for c in cancelled] == [json.loads(second)["child"]]
    # Schedules: their keys share {schedules}, one slot.
    record = await store.schedules.create("alice", "daily", {"cron": "@daily"}, 1_000)
    assert await store.schedules.advance(record, Tick(last_tick_ms=1_000, next_ms=2_000))
    assert [text[-200:] for text in scripts if text not in SCRIPTS_RUN] == []


async def test_list_runs_merges_the_partitions_newest_first_with_stable_cursors(
    store: Store,
) -> None:
    made = []
    for i in range(60):  # several runs per millisecond: ties are ordered by id
        run_id = keys.run_id_in(store.partitions[i % 8], uuid.uuid4().hex)
        made.append((await store.runs.create(run_id, "flow", "1", {})).run)
    expected = sorted(((r.create_ms, r.run_id) for r in made), reverse=True)
    for size in (1, 7, 60, 100):
        seen: list[tuple[int, str]] = []
        cursor = None
        while True:
            page = await store.runs.page("", "", size, cursor)
            seen += [(r.create_ms, r.run_id) for r in page.runs]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == expected, f"pages of {size}"
    by_workflow = await store.runs.page("flow", "", 100, None)
    assert [(r.create_ms, r.run_id) for r in by_workflow.runs] == expected
    assert (await store.runs.page("other", "", 100, None)).runs == []


async def test_counters_are_summed_over_the_partitions(store: Store) -> None:
    for _ in range(20):
        await store.runs.create(store.runs.new_run_id(), "flow", "1", {})
    stats = await store.runs.stats()
    assert stats.by_status == {"QUEUED": 20} and stats.queued == {"flow": 20}
    (builds,) = await store.builds.list_all("flow")
    assert [(b.build, b.queued) for b in builds.builds] == [("", 20)]


async def test_the_queued_limit_counts_every_partition(store: Store) -> None:
    limits = TenantLimits(max_queued=5)
    for _ in range(5):
        await store.runs.create(store.runs.new_run_id(), "flow", "1", {}, tenant="t", limits=limits)
    other = Store(store.redis, partitions=8)  # another replica: it has counted nothing itself
    with pytest.raises(Exception, match="5 runs of this tenant are queued"):
        await other.runs.create(other.runs.new_run_id(), "flow", "1", {}, tenant="t", limits=limits)


async def test_a_replica_with_another_partition_count_refuses_to_start(
    store: Store, redis_url: str
) -> None:
    other = Store(connect(URLS[id(store)]), partitions=16)
    with pytest.raises(FailedPreconditionError, match="--partitions 8") as caught:
        await other.check_partitions()
    assert caught.value.reason == "PARTITIONS_MISMATCH"
    await Store(store.redis, partitions=8).check_partitions()  # the same count starts
    await other.redis.aclose()


async def test_a_redis_in_the_layout_before_partitions_is_refused(
    redis_url: str, redis: aioredis.Redis
) -> None:
    await redis.hset("ll:stats:status", "SUCCEEDED", 3)
    store = Store(connect(redis_url))
    with pytest.raises(FailedPreconditionError, match="Upgrading to partitions") as caught:
        await store.check_partitions()
    assert caught.value.reason == "OLD_KEY_LAYOUT"
    assert not await redis.exists(keys.META), "nothing written"
    await store.redis.aclose()


async def test_notices_wake_the_dispatcher_of_every_replica_subscribed(
    store: Store, redis_url: str
) -> None:
    from longline._store import Queues

    reader = connect(URLS[id(store)], socket_timeout=None)
    queues = Queues(store.redis, reader, "cp-a", store.partitions)
    seen: list[str | None] = []

    async def listen() -> None:
        async for stream in queues.notices():
            seen.append(stream)

    async def seen_as(want: list[str | None]) -> bool:
        return seen == want

    task = asyncio.create_task(listen())
    await eventually(lambda: seen_as([None]), what="the subscription")
    run = (await store.runs.create(store.runs.new_run_id(), "flow", "1", {})).run
    expected = keys.queue_key(keys.partition_of(run.run_id), "flow")
    await eventually(lambda: seen_as([None, expected]), what="the notice")
    task.cancel()
    await queues.close_notices()
    await reader.aclose()


async def test_runs_made_while_a_page_is_read_neither_repeat_nor_hide_others(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each partition's index is read on from the last score read, not by offset: runs
    created between two reads of a page (newer than all) shift nothing."""
    made = [
        (await store.runs.create(store.runs.new_run_id(), "flow", "1", {})).run for _ in range(96)
    ]
    for r in made[::4]:  # a page of them takes several reads of each partition
        await store.runs.cancel(r.run_id, "a quarter")
    cancelled = sorted(((r.create_ms, r.run_id) for r in made[::4]), reverse=True)
    merged = store.runs._merged
    calls = 0

    async def merged_then_more_runs(*args: object) -> list[tuple[int, str]]:
        nonlocal calls
        calls += 1
        batch = await merged(*args)  # type: ignore[arg-type]
        for _ in range(16):  # newer than every run read: in every partition, above the reads
            run = (await store.runs.create(store.runs.new_run_id(), "flow", "1", {})).run
            await store.runs.cancel(run.run_id, "new")
        return batch

    monkeypatch.setattr(store.runs, "_merged", merged_then_more_runs)
    page = await store.runs.page("", "CANCELLED", 10, None)
    assert calls >= 2, "the page took more than one read of the partitions"
    assert [(r.create_ms, r.run_id) for r in page.runs] == cancelled[:10]


async def test_partition_copies_of_the_current_build_never_go_back_and_are_made_whole(
    store: Store,
) -> None:
    from longline._store._builds import copy_current

    await store.builds.promote("flow", "v1", "", True)
    await store.builds.promote("flow", "v2", "", True)
    copies = [keys.builds_current_key(n) for n in store.partitions]
    assert {await store.redis.hget(c, "flow") for c in copies} == {"v2"}
    # A copy written late, from the earlier promotion (two at once; a sweep's old view).
    await copy_current(store.redis, store.partitions, {"flow": ("v1", 1)})
    assert {await store.redis.hget(c, "flow") for c in copies} == {"v2"}
    # A promotion cut short after its MULTI: the copies lag behind, until made whole.
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.BUILDS_CURRENT, "flow", "v3")
        pipe.hincrby(keys.BUILDS_GEN, "flow", 1)
        await pipe.execute()
    run_id = store.runs.new_run_id()
    await store.runs.create(run_id, "flow", "1", {})
    refused = await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3, "v3"))
    assert isinstance(refused, WrongBuild) and refused.current == "v2", "the copy is behind"
    await store.builds.sync(["flow"])  # what the dispatcher does on such a refusal
    claimed = await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 3, "v3"))
    assert isinstance(claimed, Claimed) and claimed.workflow == "flow"


async def test_copies_ahead_of_a_counter_that_went_back_are_made_whole(store: Store) -> None:
    """The node of {builds} failed over and lost the last promotion's MULTI: its counter and
    current build went back, while the copies (other slots) kept the later promotion."""
    await store.builds.promote("flow", "x", "", True)
    await store.builds.promote("flow", "y", "", True)  # generation 2 everywhere
    await store.redis.hset(keys.BUILDS_CURRENT, "flow", "x")  # the lost MULTI: back to 1
    await store.redis.hset(keys.BUILDS_GEN, "flow", 1)
    await store.builds.sync(["flow"])
    copies = [keys.builds_current_key(n) for n in store.partitions]
    assert {await store.redis.hget(c, "flow") for c in copies} == {"x"}
    await store.builds.promote("flow", "z", "", True)  # and later promotions land
    assert {await store.redis.hget(c, "flow") for c in copies} == {"z"}


async def test_a_batch_of_scripts_larger_than_a_node_pool_runs(store: Store) -> None:
    """On a cluster, a batch goes side by side, bounded in flight: 40 workflows promoted
    over 8 partitions make 320 copies in one sync."""
    for i in range(40):
        await store.presence.announce("w1", [(f"wf{i}", "")], 60_000)
        await store.builds.promote(f"wf{i}", "v1", "", True)
    await store.redis.delete(*[keys.builds_current_key(n) for n in store.partitions])
    await store.builds.sync([f"wf{i}" for i in range(40)])
    copy = keys.builds_current_key(store.partitions[-1])
    assert await store.redis.hget(copy, "wf39") == "v1"


async def test_the_sweep_finds_the_index_entries_of_gone_runs_in_every_partition(
    store: Store,
) -> None:
    """The sweep SCANs for the partitions' indexes: on a cluster, on every master."""
    ids = [keys.run_id_in(n, uuid.uuid4().hex) for n in store.partitions for _ in range(5)]
    made = [(await store.runs.create(i, "flow", "1", {})).run for i in ids]
    for r in made:  # as if their retention ran out
        await store.redis.delete(keys.run_key(r.run_id))
    await asyncio.sleep(0.01)
    report = await store.sweeper.sweep(1, {})
    assert report.index_entries == 80  # each run in its tenant's and its workflow's index
    assert (await store.runs.page("", "", 100, None)).runs == []


async def test_the_hub_serves_every_partition_live_over_one_connection_per_node(
    store: Store, redis_cluster: RedisCluster
) -> None:
    """A run in each partition, each watched: every event arrives live (a watcher left to
    wait for a message that went elsewhere would time out here), over one subscribing
    connection per node the runs live on (3 masters; 1 on a single Redis)."""
    url = URLS[id(store)]
    reader = connect(url, socket_timeout=None, max_connections=1)
    hub = EventHub(store, EventFeed(reader, "cp-hub"))
    task = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub._ready.wait(), 10)
        ids = [keys.run_id_in(n, uuid.uuid4().hex) for n in store.partitions]
        writers = []
        for run_id in ids:
            await store.runs.create(run_id, "flow", "null", {})
            assert await store.attempts.claim(ClaimRequest(run_id, 1, "w1", "cp", 60_000, 1))
            writers.append(RunWriter(store, run_id, 1, "w1"))
        seen: dict[str, list[str]] = {run_id: [] for run_id in ids}

        async def follow(run_id: str) -> None:
            async for event in hub.events(run_id):
                seen[run_id].append(event.type)

        followers = [asyncio.create_task(follow(run_id)) for run_id in ids]

        async def all_subscribed() -> bool:
            watches = [hub._watches.get(keys.events_key(run_id)) for run_id in ids]
            return all(w is not None and w.subscribed.done() for w in watches)

        await eventually(all_subscribed, what="every watcher subscribed")
        for writer in writers:
            await writer.append([encode_event("STATUS", 1, "live")])
        for writer in writers:
            await writer.finish(
                "SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1)
            )
        await asyncio.wait_for(asyncio.gather(*followers), 10)
        assert all(s == ["RUN_QUEUED", "STATUS", "RUN_SUCCEEDED"] for s in seen.values()), seen
        nodes = len(redis_cluster.master_ports) if url.startswith("redis+cluster") else 1
        assert hub._feed.connections == nodes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.aclose()


async def test_a_subscription_follows_its_channel_when_the_slot_moves(
    redis_cluster: RedisCluster,
) -> None:
    """A channel's slot moves to another master: the Fanout's subscription there ends (Redis
    7 tells the subscriber; a 6.2 PUBLISH reaches every node anyway), it renews and
    subscribes again, and a message published after the move arrives."""
    redis_cluster.flush()
    client = connect(redis_cluster.longline_url)
    reader = connect(redis_cluster.longline_url, socket_timeout=None)
    channel = "moving:{tag-for-the-slot-move}"
    slot = keys.slot(channel)
    notify = client.register_script(_scripts.NOTIFY)
    fanout = Fanout(reader, "ll:hub:move-test")
    views = redis_cluster.node(redis_cluster.master_ports[0]).client()
    try:
        owner = next(v for v in _masters(views) if _owns(v, slot))
        target = next(v for v in _masters(views) if v.id != owner.id)
        received: list[str] = []
        errors: list[str] = []

        async def follow() -> None:
            while True:
                try:
                    await fanout.open()
                    await fanout.subscribe(channel)
                    async for message in fanout.messages():
                        if isinstance(message, FanoutMessage):
                            received.append(message.data)
                except RedisError as exc:
                    errors.append(str(exc))
                    await fanout.renew()

        follower = asyncio.create_task(follow())
        await eventually(lambda: _true(fanout.connections >= 1), what="the subscription")
        await _subscribed_by_now(notify, channel, received, "before")
        _move_slot(redis_cluster, slot, owner, target)
        await _subscribed_by_now(notify, channel, received, "after")
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        if await sharded(client):
            assert any("slot moved" in e or "MOVED" in e for e in errors), errors
        _move_slot(redis_cluster, slot, target, owner)  # the session's cluster as it was
    finally:
        views.close()
        await fanout.aclose()
        await reader.aclose()
        await client.aclose()


async def _subscribed_by_now(notify: Any, channel: str, received: list[str], tag: str) -> None:
    """Publish (as the scripts do) until a message comes through: a subscription being
    renewed misses some, which pub/sub allows."""

    async def arrived() -> bool:
        await notify(keys=[channel], args=[tag])
        await asyncio.sleep(0.05)
        return tag in received

    await eventually(arrived, what=f"a message published {tag} the move")


def _masters(client: Any) -> list[NodeView]:
    return [v for v in parse_nodes(client.execute_command("CLUSTER", "NODES")) if v.is_master]


def _owns(view: NodeView, slot: int) -> bool:
    for part in view.slots:
        if part.startswith("["):
            continue
        low, _, high = part.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False


def _move_slot(cluster: RedisCluster, slot: int, source: NodeView, target: NodeView) -> None:
    """Move an empty slot: importing on the target, migrating on the source, then the new
    owner on every master (the target first, as the Redis manual orders it)."""
    with cluster.node(target.port).client() as t, cluster.node(source.port).client() as s:
        t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.id)
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.id)
        assert s.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
        t.execute_command("CLUSTER SETSLOT", slot, "NODE", target.id)
        s.execute_command("CLUSTER SETSLOT", slot, "NODE", target.id)
    for port in cluster.master_ports:
        if port not in (source.port, target.port):
            with cluster.node(port).client() as other:
                other.execute_command("CLUSTER SETSLOT", slot, "NODE", target.id)


async def _true(value: bool) -> bool:
    return value


async def test_a_subscriber_that_falls_behind_is_told_to_renew_not_left_to_grow(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages nobody reads pile up only to a bound; past it the feed fails, like a lost
    connection (the caller renews and re-reads from the streams)."""
    monkeypatch.setattr(_fanout, "INBOX_MESSAGES", 50)
    reader = connect(URLS[id(store)], socket_timeout=None)
    fanout = Fanout(reader, "ll:hub:behind")
    notify = store.redis.register_script(_scripts.NOTIFY)
    channel = keys.work_channel(store.partitions[0])
    try:
        await fanout.open()
        await fanout.subscribe(channel)
        for i in range(60):
            await notify(keys=[channel], args=[f"m{i}"])
        received = []
        with pytest.raises(RedisError, match="fell behind"):
            async with asyncio.timeout(10):  # (without the bound: waits for more, for good)
                async for message in fanout.messages():
                    received.append(message)
        assert 2 <= len(received) <= 50  # the confirmations, then what fitted
    finally:
        await fanout.aclose()
        await reader.aclose()
