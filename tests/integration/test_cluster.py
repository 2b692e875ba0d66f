"""The local Redis Cluster the tests start (tests/cluster.py), against real servers: it
forms, a cluster client spreads keys over every master, replicas follow their masters,
and a killed master's replica takes over."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ClusterCrossSlotError

from longline._store import connect
from tests.cluster import SLOTS, RedisCluster, parse_nodes, slot_ranges
from tests.conftest import eventually


@pytest.fixture
def replicated() -> Iterator[RedisCluster]:
    """A cluster of its own, 3 masters with a replica each, for a test that kills nodes."""
    with RedisCluster(replicas=1) as cluster:
        yield cluster
        print(cluster.logs())  # shown when the test failed


def _slots_held(text: str) -> dict[int, set[int]]:
    """Port -> the slots it holds, from CLUSTER NODES."""
    held: dict[int, set[int]] = {}
    for view in parse_nodes(text):
        for part in view.slots:
            first, _, last = part.partition("-")
            held.setdefault(view.port, set()).update(range(int(first), int(last or first) + 1))
    return held


def test_three_masters_hold_every_slot_evenly(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.master_ports) == 3
    for port in redis_cluster.master_ports:  # every node's view agrees
        with redis_cluster.node(port).client() as c:
            info = c.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_assigned"]) == SLOTS
            assert int(info["cluster_known_nodes"]) == 3
            assert int(info["cluster_size"]) == 3
            held = _slots_held(c.execute_command("CLUSTER", "NODES"))
        assert sorted(held) == sorted(redis_cluster.master_ports)
        expected = slot_ranges(3)
        assert [held[p] for p in redis_cluster.master_ports] == [set(r) for r in expected]
        assert all(5461 <= len(slots) <= 5462 for slots in held.values())


async def test_a_cluster_client_writes_and_reads_keys_on_every_master(
    redis_cluster: RedisCluster, redis_cluster_client: aioredis.RedisCluster
) -> None:
    client = redis_cluster_client
    prefix = uuid.uuid4().hex
    keys = [f"{prefix}:{i}" for i in range(60)]
    for key in keys:
        assert await client.set(key, key)
    where: dict[int, list[str]] = {}
    for key in keys:
        assert await client.get(key) == key
        port = client.get_node_from_key(key).port
        where.setdefault(port, []).append(key)
    assert sorted(where) == sorted(redis_cluster.master_ports)  # every master got some
    for port, on_node in where.items():
        with redis_cluster.node(port).client() as c:
            assert c.dbsize() == len(on_node)
            for key in on_node[:5]:  # the server agrees on the slot, and holds the key
                assert c.execute_command("CLUSTER", "KEYSLOT", key) == client.keyslot(key)
                assert c.get(key) == key


async def test_keys_under_one_hash_tag_share_a_slot_and_scripts_across_slots_fail(
    redis_cluster: RedisCluster, redis_cluster_client: aioredis.RedisCluster
) -> None:
    client = redis_cluster_client
    tag = uuid.uuid4().hex
    tagged = [f"run:{{{tag}}}:{part}" for part in ("state", "events", "lease")]
    assert len({client.keyslot(k) for k in tagged}) == 1
    script = "for _, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1]) end return #KEYS"
    assert await client.eval(script, len(tagged), *tagged, "v") == 3
    # Two keys in different slots of the same master: the server itself refuses the script.
    port = client.get_node_from_key(tagged[0]).port
    other = next(
        k
        for k in (f"{tag}:{i}" for i in range(1000))
        if client.get_node_from_key(k).port == port
        and client.keyslot(k) != client.keyslot(tagged[0])
    )
    with redis_cluster.node(port).client() as c, pytest.raises(ClusterCrossSlotError):
        c.eval(script, 2, tagged[0], other, "v")


async def test_every_test_starts_with_an_empty_cluster(
    redis_cluster: RedisCluster, redis_cluster_client: aioredis.RedisCluster
) -> None:
    for port in redis_cluster.master_ports:
        with redis_cluster.node(port).client() as c:
            assert c.dbsize() == 0
    await redis_cluster_client.set(uuid.uuid4().hex, "left behind for the next test's flush")


def _key_on(cluster: RedisCluster, port: int, prefix: str) -> str:
    """A key whose slot the master on `port` holds (as formed)."""
    share = slot_ranges(len(cluster.masters))[cluster.master_ports.index(port)]
    with cluster.node(port).client() as c:
        return next(
            k
            for k in (f"{prefix}:{i}" for i in range(10_000))
            if c.execute_command("CLUSTER", "KEYSLOT", k) in share
        )


def test_each_master_has_a_replica_whose_link_is_up_and_gets_its_writes(
    replicated: RedisCluster,
) -> None:
    assert len(replicated.replica_ports) == 3
    assert sorted(replicated.replica_of.values()) == sorted(replicated.master_ports)
    for replica, master in replicated.replica_of.items():
        key = _key_on(replicated, master, uuid.uuid4().hex)
        with replicated.node(master).client() as m, replicated.node(replica).client() as r:
            info = m.info("replication")
            assert info["role"] == "master" and info["connected_slaves"] == 1
            assert info["slave0"]["port"] == replica
            info = r.info("replication")
            assert info["role"] == "slave" and info["master_port"] == master
            assert info["master_link_status"] == "up"
            assert m.set(key, "v")
            assert m.wait(1, 5000) == 1  # the replica acknowledged it
            r.execute_command("READONLY")  # a replica serves reads of its master's slots
            assert r.get(key) == "v"


async def test_a_killed_master_is_replaced_by_its_replica(replicated: RedisCluster) -> None:
    master = replicated.master_ports[0]
    replica = next(r for r, m in replicated.replica_of.items() if m == master)
    key = _key_on(replicated, master, uuid.uuid4().hex)
    with replicated.node(master).client() as m:
        assert m.set(key, "kept")
        assert m.wait(1, 5000) == 1
    assert replicated.kill_master(0) == master

    async def promoted() -> bool:
        return await asyncio.to_thread(replicated.failed_over_from, master)

    await eventually(promoted, timeout=30, what="the replica to take over")
    masters_now = replicated.live_master_ports()
    assert replica in masters_now and master not in masters_now
    client = aioredis.RedisCluster.from_url(f"redis://127.0.0.1:{replica}", decode_responses=True)
    try:
        await client.initialize()
        assert client.get_node_from_key(key).port == replica
        assert await client.get(key) == "kept"
        assert await client.set(key, "written after the failover")
    finally:
        await client.aclose()


def test_a_start_that_fails_leaves_no_process_behind() -> None:
    cluster = RedisCluster(replicas=1)
    # No cluster can be whole within a millisecond (a master waits 2 s before it turns ok).
    with pytest.raises(RuntimeError, match="timed out"):
        cluster.start(timeout=0.001)
    assert all(n.proc is not None and n.proc.poll() is not None for n in cluster.nodes)
    cluster.stop()  # twice is fine


async def test_queue_reads_route_by_their_stream_without_asking_a_node_for_keys(
    redis_cluster: RedisCluster,
) -> None:
    """redis-py would send COMMAND GETKEYS to one node, always the same, before every
    XREADGROUP (its keys move); longline's client finds them itself (_cluster)."""
    redis_cluster.flush()
    client = connect(redis_cluster.longline_url)
    try:
        for port in redis_cluster.master_ports:
            with redis_cluster.node(port).client() as node:
                node.config_resetstat()
        await client.xgroup_create("q{x}", "g", mkstream=True)
        await client.xreadgroup("g", "c", {"q{x}": ">"}, count=1)
        async with client.pipeline(transaction=False) as pipe:
            pipe.xreadgroup("g", "c", {"q{x}": ">"}, count=1)
            await pipe.execute()
        calls: dict[str, int] = {}
        for port in redis_cluster.master_ports:
            with redis_cluster.node(port).client() as node:
                for name, stat in node.info("commandstats").items():
                    calls[name] = calls.get(name, 0) + int(stat["calls"])
        assert calls.get("cmdstat_xreadgroup") == 2
        assert "cmdstat_command|getkeys" not in calls
    finally:
        await client.aclose()
