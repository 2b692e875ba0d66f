"""The Redis client every process uses survives being cancelled mid-command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from longline._store import connect
from longline._store._connection import scripts_together
from tests.conftest import eventually


async def test_cancelling_a_blocked_read_always_ends_the_task(redis_url: str) -> None:
    """Python 3.11's asyncio.timeout could swallow the cancel and hang the task forever."""
    await cancel_blocked_reads(redis_url, 60)


async def cancel_blocked_reads(url: str, steps: int) -> None:
    """Cancel a blocked XREADGROUP at different points, `steps` times, through each kind of
    pool connect() makes: every task ends, and the client still works."""
    for pool in (0, 1):
        client = connect(url, max_connections=pool, socket_timeout=30)
        await client.xgroup_create("probe", "g", id="$", mkstream=True)
        for i in range(steps):
            task = asyncio.create_task(
                client.xreadgroup("g", "c", {"probe": ">"}, count=1, block=10_000)
            )
            for _ in range(1 + i % 6):  # cancel at different points of the command
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, f"a cancelled XREADGROUP hung (pool={pool}, step {i})"
        assert await client.ping()  # and the client still works
        await client.delete("probe")
        await client.aclose()


async def test_scripts_run_together_after_the_server_forgot_them(redis_url: str) -> None:
    """Pipelined scripts go as EVALSHA with no SCRIPT EXISTS first: after SCRIPT FLUSH (a
    restart, a failover to a replica that never saw them) each is loaded and run once."""
    client = connect(redis_url)
    a, b = "{probe}:a", "{probe}:b"
    try:
        incr = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        echo = client.register_script("return ARGV[1]")
        await client.delete(a, b)
        # Each call on a key of its own: a cluster client runs them side by side.
        calls = [(incr, [a], [1]), (echo, [a], ["x"]), (incr, [b], [10])]
        assert await scripts_together(client, calls) == [1, "x", 10]
        await client.script_flush()  # every primary of a cluster
        assert await scripts_together(client, calls) == [2, "x", 20]
        assert (int(await client.get(a)), int(await client.get(b))) == (2, 20)  # each once
        bad = client.register_script("return redis.error_reply('NOPE no')")
        replies = await scripts_together(client, [(bad, [a], []), calls[0]], raise_on_error=False)
        assert isinstance(replies[0], Exception) and replies[1] == 3
    finally:
        await client.delete(a, b)
        await client.aclose()


def test_a_write_to_a_connection_that_just_closed_is_a_connection_error(redis_url: str) -> None:
    """uvloop (the planes' loop) raises RuntimeError, "the handler is closed", for a write to
    a connection whose peer has just gone; a chaos test met it as an INTERNAL answer to
    GetRun during a cluster failover. It must be the ConnectionError it is (callers answer
    UNAVAILABLE, loops back off), on every connection connect() makes: both pools of a
    single Redis, and every node of a cluster (the --redis-cluster pass)."""
    uvloop = pytest.importorskip("uvloop")  # the planes' loop where it installs (not Windows)

    async def main() -> None:
        for pool in (0, 1):
            client = connect(redis_url, max_connections=pool)
            await client.set("{probe}:k", "v")
            if hasattr(client, "get_nodes"):
                fresh = [n.connection_class(**n.connection_kwargs) for n in client.get_nodes()]
            else:
                fresh = [client.connection_pool.make_connection()]
            try:
                for conn in fresh:
                    await conn.connect()
                    # Nothing told redis-py of the reset before the write.
                    await _reset_by_peer(conn)
                    try:
                        with pytest.raises(RedisConnectionError):
                            await conn.send_command("GET", "{probe}:k")
                    finally:
                        await conn.disconnect(nowait=True)
                assert await client.get("{probe}:k") == "v"  # and the client goes on
                await client.delete("{probe}:k")
            finally:
                await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_every_connection_connect_makes_fails_a_closed_write_as_a_connection_error() -> None:
    """The class of _transport on every kind of connection (no server needed): TCP, TLS and
    Unix-socket URLs with both pools, Sentinel's to the primary and to the sentinels."""
    from longline._store._sentinel import _Connection, parse_sentinel_url, sentinel_client
    from longline._store._transport import ClosedWrites

    for url in ("redis://h:1", "rediss://h:1", "unix:///tmp/none.sock"):
        for pool in (0, 4):
            made = connect(url, max_connections=pool).connection_pool.connection_class
            assert issubclass(made, ClosedWrites), (url, pool, made)
    assert issubclass(_Connection, ClosedWrites)
    client = sentinel_client(
        parse_sentinel_url("redis+sentinel://h:1,h:2/mymaster"), max_connections=0, options={}
    )
    for each in client.connection_pool.sentinel_manager.sentinels:
        assert issubclass(each.connection_pool.connection_class, ClosedWrites)


@pytest.mark.single_redis  # the pool of a single Redis (a cluster node has a pool of its own)
async def test_an_idle_connection_is_handed_out_at_once_only_while_sound(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planes' pool (QuickCheckout) hands an idle connection out without redis-py's
    checkout (its lock, timer and check): only one that is open with nothing unread. A
    connection with a reply left on it, or one the server closed, goes redis-py's way and is
    reconnected, so no command ever reads another's reply."""
    import redis.asyncio as aioredis

    from longline._store._transport import QuickCheckout

    slow = 0
    original = aioredis.BlockingConnectionPool.get_connection

    async def counted(self: object, *args: object, **kwargs: object) -> object:
        nonlocal slow
        slow += 1
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(aioredis.BlockingConnectionPool, "get_connection", counted)
    client = connect(redis_url, max_connections=4)
    killer = connect(redis_url)
    pool = client.connection_pool
    assert isinstance(pool, QuickCheckout)
    try:
        await client.set("{probe}:k", "v")
        assert slow == 1  # the first makes the connection
        for _ in range(20):
            assert await client.get("{probe}:k") == "v"
        assert slow == 1  # the rest took it as it was

        # A reply left unread on the idle connection: not handed out as it is.
        conn = await pool.get_connection()
        await conn.send_command("PING")
        await eventually(_async(lambda: conn._reader._buffer), what="the reply, unread")
        await pool.release(conn)
        assert await client.get("{probe}:k") == "v"  # not "PONG"
        assert slow == 2

        # The server closed it: redis-py's way reconnects it.
        conn = await pool.get_connection()
        my_id = await conn.retry.call_with_retry(
            lambda: _client_id(conn), lambda _: asyncio.sleep(0)
        )
        await pool.release(conn)
        await killer.client_kill_filter(_id=my_id)
        await eventually(_async(conn._reader.at_eof), what="the loop to see the end")
        assert await client.get("{probe}:k") == "v"
        assert slow == 3

        # The peer reset it: an error on the reader, no end-of-file (what asyncio's stream
        # protocol makes of a reset). redis-py's own check passes that; ours closes it, and
        # the command goes out on a new connection instead of failing.
        conn = await pool.get_connection()
        await pool.release(conn)
        await _reset_by_peer(conn)
        assert await client.get("{probe}:k") == "v"
        assert slow == 4

        # More callers than connections: they wait, and each is served in turn; the pool
        # never holds more than its bound.
        async with asyncio.timeout(30):
            got = await asyncio.gather(*(client.get("{probe}:k") for _ in range(200)))
        assert got == ["v"] * 200
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 4
        assert not pool._in_use_connections
    finally:
        await client.delete("{probe}:k")
        await client.aclose()
        await killer.aclose()


async def _reset_by_peer(conn: Any) -> None:
    """Put `conn` in the state a reset by the server leaves: the transport closed, and the
    reader holding the error instead of an end-of-file (what asyncio's stream protocol does
    with a reset)."""
    conn._writer.transport.abort()
    for _ in range(10):
        await asyncio.sleep(0)
    conn._reader._eof = False
    conn._reader.set_exception(ConnectionResetError(104, "Connection reset"))


def _async(probe: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def probed() -> object:
        return probe()

    return probed


async def _client_id(conn: object) -> int:
    await conn.send_command("CLIENT", "ID")  # type: ignore[attr-defined]
    return int(await conn.read_response())  # type: ignore[attr-defined]


@pytest.mark.single_redis  # counts the connections of one server
@pytest.mark.parametrize("bound", [0, 4])
async def test_a_closed_client_opens_no_connection_again(
    redis_url: str, redis: Any, bound: int
) -> None:
    """After aclose() nothing opens a connection of the client again: a command is a
    ConnectionError (redis-py's pool would open a new connection for it), and so is a
    subscription's next command on the connection it held (redis-py would connect it
    again); a command under way when it closed ends with one. Such a connection is closed
    by nobody: a socket left open until the garbage collector finds it (a control plane's
    give-back that outlived its shutdown did that)."""
    name = f"probe-closed-{bound}"
    client = connect(redis_url, max_connections=bound, client_name=name)

    await client.ping()
    pubsub = client.pubsub()
    await pubsub.subscribe("{probe}:a")
    blocked = asyncio.create_task(client.blpop(["{probe}:never"], timeout=3))
    await eventually(
        lambda: _any(_named(redis, name), lambda c: c.get("cmd") == "blpop"),
        what="the BLPOP under way",
    )
    await client.aclose()
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(blocked, 10)
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.ping()
    with pytest.raises(RedisConnectionError, match="closed"):
        await pubsub.subscribe("{probe}:b")
    await eventually(
        lambda: _none(_named(redis, name)), what="the closed client's connections to go"
    )
    await asyncio.sleep(0.5)  # a reconnection would be back by now: none is
    assert await _named(redis, name) == []


@pytest.mark.single_redis  # counts the connections of one server
async def test_a_connection_opening_while_its_client_closes_is_not_left_open(
    redis_url: str, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client closes while one of its connections is on its way up (the close finds it
    not connected, nothing to close): once up, it is closed, and its command fails."""
    import redis.asyncio as aioredis

    name = "probe-closing"
    client = connect(redis_url, max_connections=2, client_name=name)
    reached, go = asyncio.Event(), asyncio.Event()
    original = aioredis.Connection._connect

    async def held(self: Any) -> None:
        reached.set()
        await go.wait()
        await original(self)

    monkeypatch.setattr(aioredis.Connection, "_connect", held)
    command = asyncio.create_task(client.ping())
    await asyncio.wait_for(reached.wait(), 10)
    await client.aclose()  # while the connection is held on its way up
    go.set()
    with pytest.raises(RedisConnectionError, match="closed"):
        await asyncio.wait_for(command, 10)

    await eventually(lambda: _none(_named(redis, name)), what="the connection to be closed")


async def _named(redis: Any, name: str) -> list[dict[str, Any]]:
    """The server's connections of the client named `name`."""
    return [c for c in await redis.client_list() if c.get("name") == name]


async def _any(rows: Awaitable[list[dict[str, Any]]], test: Callable[[Any], bool]) -> bool:
    return any(test(row) for row in await rows)


async def _none(rows: Awaitable[list[dict[str, Any]]]) -> bool:
    return not await rows


def test_the_planes_pools_hand_out_idle_connections_at_once() -> None:
    """QuickCheckout on every pool connect() makes with a bound: a single Redis over TCP,
    TLS and a Unix socket, and Sentinel's primary (no server needed)."""
    from longline._store._sentinel import parse_sentinel_url, sentinel_client
    from longline._store._transport import QuickCheckout

    for url in ("redis://h:1", "rediss://h:1", "unix:///tmp/none.sock"):
        assert isinstance(connect(url, max_connections=4).connection_pool, QuickCheckout), url
    client = sentinel_client(
        parse_sentinel_url("redis+sentinel://h:1,h:2/mymaster"), max_connections=4, options={}
    )
    assert isinstance(client.connection_pool, QuickCheckout)
