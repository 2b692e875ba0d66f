"""connect() through Sentinel, against a real primary, replica and three sentinels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from longline._store import connect
from tests.conftest import eventually
from tests.integration.test_redis_client import cancel_blocked_reads
from tests.sentinel import SERVICE, SentinelCluster


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as started:
        yield started
        print(started.logs())  # shown when the test failed


def _names(node: redis.Redis) -> list[str]:
    return [c["name"] for c in node.client_list()]


async def test_reads_and_writes_go_to_the_primary_with_every_option(
    cluster: SentinelCluster,
) -> None:
    primary = cluster.node(cluster.primary_port()).client()
    for pool in (0, 4):
        client = connect(
            cluster.url.replace("/0", "/3"), max_connections=pool, client_name=f"probe-{pool}"
        )
        try:
            assert await client.set(f"k{pool}", "v")
            assert await client.get(f"k{pool}") == "v"  # str: decode_responses
            assert await client.hgetall("missing") == {}  # RESP2 reply shapes
            assert f"probe-{pool}" in _names(primary)
            primary.select(3)
            assert primary.get(f"k{pool}") == "v"  # written to the primary, in db 3
            primary.select(0)
        finally:
            await client.aclose()
    primary.close()


async def test_a_bounded_pool_makes_callers_wait_instead_of_opening_more(
    cluster: SentinelCluster,
) -> None:
    primary = cluster.node(cluster.primary_port()).client()
    client = connect(cluster.url, max_connections=2, socket_timeout=None, client_name="bounded")
    try:
        waiting = [asyncio.create_task(client.blpop([f"list{i}"], timeout=0)) for i in range(5)]

        async def two_blocked() -> bool:
            return _names(primary).count("bounded") == 2 and primary.info()["blocked_clients"] == 2

        await eventually(two_blocked, what="two BLPOPs holding the pool's two connections")
        for i in range(5):
            primary.rpush(f"list{i}", "x")
            assert _names(primary).count("bounded") <= 2
        results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert sorted(key for key, _ in results) == [f"list{i}" for i in range(5)]
        assert _names(primary).count("bounded") == 2
    finally:
        await client.aclose()
        primary.close()


async def test_after_kill_9_of_the_primary_the_same_client_reaches_the_new_one(
    cluster: SentinelCluster,
) -> None:
    client = connect(cluster.url, max_connections=4, client_name="survivor")
    try:
        await asyncio.gather(*(client.incr("n") for _ in range(20)))  # several connections
        assert await client.execute_command("WAIT", 1, 5000) == 1  # replicated before the kill
        killed_at = time.monotonic()
        old = cluster.kill_primary()

        async def written() -> bool:
            try:
                return bool(await client.set("after", "1"))
            except RedisError:  # refused, or no primary yet while the sentinels agree
                return False

        await eventually(written, timeout=30, what="a write through the same client")
        print(f"writes went through again {time.monotonic() - killed_at:.1f} s after the kill")
        assert cluster.failed_over_from(old)
        new = cluster.node(cluster.primary_port()).client()
        assert new.get("after") == "1"
        # Every pooled connection now goes to the new primary: none is left on the dead one.
        await asyncio.gather(*(client.incr("n") for _ in range(20)))
        assert await client.get("n") == "40"
        assert "survivor" in _names(new)
        new.close()
    finally:
        await client.aclose()


def _swap_roles(cluster: SentinelCluster, old: int, new: int) -> None:
    """Make `new` the primary and `old` its replica by hand, then point the sentinels at
    `new`: unlike a Sentinel failover, this leaves the clients of `old` connected, so their
    next write meets a demoted primary (READONLY) instead of a closed connection."""
    for sentinel in cluster.sentinels:
        with sentinel.client() as c:
            c.sentinel_remove(SERVICE)
    with cluster.node(new).client() as c:
        c.replicaof("NO", "ONE")
    with cluster.node(old).client() as c:
        c.replicaof("127.0.0.1", new)
    deadline = time.monotonic() + 20
    with cluster.node(old).client() as c:
        while c.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the demoted primary did not sync"
            time.sleep(0.05)  # a child process syncing: nothing to block on
    for sentinel in cluster.sentinels:
        with sentinel.client() as c:
            c.sentinel_monitor(SERVICE, "127.0.0.1", new, 2)
            c.sentinel_set(SERVICE, "down-after-milliseconds", 1000)
    assert cluster.primary_port() == new


async def test_a_write_that_meets_a_demoted_primary_moves_to_the_new_one(
    cluster: SentinelCluster,
) -> None:
    client = connect(cluster.url, max_connections=1, client_name="mover")
    script = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    try:
        first = cluster.primary_port()
        second = next(n.port for n in cluster.nodes if n.port != first)
        assert await client.set("k", "first")
        # A plain command: redis-py's own READONLY handling. A script: Redis 6 words the
        # same refusal differently (ERR Error running script ... READONLY), handled by ours.
        for old, new, write in (
            (first, second, lambda: client.set("k", "second")),
            (second, first, lambda: script(keys=["k"], args=["third"])),
        ):
            _swap_roles(cluster, old, new)
            with cluster.node(old).client() as c:
                assert "mover" in _names(c)  # still connected to the demoted primary
            with pytest.raises(RedisConnectionError):
                await write()  # READONLY: the connection is dropped, the caller may retry
            with cluster.node(old).client() as c:
                assert "mover" not in _names(c)
            await write()  # the retry asks the sentinels, and goes to the new primary
            with cluster.node(new).client() as c:
                assert c.get("k") in ("second", "third")
                assert "mover" in _names(c)
        assert await client.get("k") == "third"
    finally:
        await client.aclose()


async def test_cancelling_a_blocked_read_through_sentinel_always_ends_the_task(
    cluster: SentinelCluster,
) -> None:
    """As tests/integration/test_redis_client.py, through the sentinel-managed pool."""
    await cancel_blocked_reads(cluster.url, 30)


async def test_passwords_for_redis_and_for_the_sentinels_go_where_the_url_says() -> None:
    with SentinelCluster(password="node-pw", sentinel_password="sentinel-pw") as cluster:
        client = connect(cluster.url)
        try:
            assert await client.set("k", "v")
            with cluster.node(cluster.primary_port()).client() as primary:
                assert primary.get("k") == "v"
        finally:
            await client.aclose()
        for wrong, refusal in (
            (cluster.url.replace("sentinel-pw", "nope"), MasterNotFoundError),  # sentinels
            (cluster.url.replace(":node-pw@", ":nope@"), AuthenticationError),  # the primary
        ):
            client = connect(wrong)
            try:
                with pytest.raises(refusal, match="AuthenticationError|invalid username-password"):
                    await client.ping()
            finally:
                await client.aclose()
