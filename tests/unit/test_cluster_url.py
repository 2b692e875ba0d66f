"""The redis+cluster:// URL: what it names, and errors that say what to fix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from longline._store import RedisConnectionError, check_redis_url, connect
from longline._store._cluster import ClusterURL, _stream_keys, _within, parse_cluster_url


def test_the_full_form() -> None:
    parsed = parse_cluster_url(
        "rediss+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001,redis-2"
        "?ssl_ca_certs=/ca.pem&ssl_check_hostname=false"
    )
    assert parsed == ClusterURL(
        seeds=(("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 6379)),
        tls=True,
        username="app",
        password="s@cret",
        options={"ssl_ca_certs": "/ca.pem", "ssl_check_hostname": False},
    )
    assert "s@cret" not in repr(parsed)


def test_a_plain_url_and_its_client() -> None:
    assert parse_cluster_url("redis+cluster://h:1") == ClusterURL((("h", 1),))
    client = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2")  # connects at first use
    assert isinstance(client, aioredis.RedisCluster)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "names no node"),
        ("redis+cluster://h:1/0", "one database"),
        ("redis+cluster://h:99999", "port is not 1-65535"),
        ("redis+cluster://h:1,:x:y", "2th) that is not host:port"),
        ("redis+cluster://h:\u00b2", "port is not 1-65535"),
        ("redis+cluster://[::1", "is not a URL"),
        ("redis+cluster://a b:1", "not host:port"),
        ("redis+cluster://app@h:1", "a user but no password"),
        ("redis+cluster://h:1?ssl_ca_certs=/ca.pem", "rediss+cluster://"),
        ("rediss+cluster://h:1?colour=blue", "unknown option(s) colour"),
        ("rediss+cluster://h:1?ssl_cert_reqs=maybe", "required, optional or none"),
        ("rediss+cluster://h:1?ssl_check_hostname=yes", "true or false"),
        ("redis+cluster://h:1#frag", "#fragment"),
    ],
)
def test_a_malformed_url_says_what_to_fix(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="expected redis\\+cluster://") as caught:
        check_redis_url(url)
    assert says in str(caught.value)


def test_a_password_never_shows_in_the_error() -> None:
    with pytest.raises(ValueError) as caught:
        check_redis_url("redis+cluster://app:hunter2@h:1/0")
    assert "hunter2" not in str(caught.value) and "app:***@" in str(caught.value)
    with pytest.raises(ValueError) as caught:  # a '?' ends the address part inside it
        check_redis_url("redis+cluster://u:se?cret@h:1")
    assert "cret" not in str(caught.value) and "u:se" not in str(caught.value)


async def test_a_unix_socket_url_opens_a_client_without_tcp_options(tmp_path: Path) -> None:
    client = connect(f"unix://{tmp_path}/none.sock")  # TCP keepalive would be a TypeError
    with pytest.raises(RedisConnectionError, match="No such file"):
        await client.ping()
    await client.aclose()


@pytest.mark.parametrize(
    ("command", "args", "keys"),
    [
        ("XREADGROUP", ("GROUP", "g", "c", "STREAMS", "q{x}", ">"), ["q{x}"]),
        ("XREADGROUP", ("GROUP", "g", "streams", "STREAMS", "q{x}", "0"), ["q{x}"]),
        (
            "XREADGROUP",
            (b"GROUP", "STREAMS", "c", b"COUNT", "5", b"STREAMS", "a", "b", ">", ">"),
            ["a", "b"],
        ),
        ("xreadgroup", ("GROUP", "g", "c", "BLOCK", "0", "NOACK", "STREAMS", "q", "0"), ["q"]),
        ("XREAD", ("COUNT", "1", "STREAMS", "streams", "0"), ["streams"]),
        ("XREADGROUP", ("GROUP", "g", "c", "STREAMS", "q"), []),  # odd: the server knows
        ("XREADGROUP", ("GROUP", "g", "c", "CLAIM", "5", "STREAMS", "q", "0"), []),  # unknown
        ("XADD", ("q", "*", "f", "v"), []),
    ],
)
def test_queue_reads_are_routed_by_their_streams(
    command: str, args: tuple[object, ...], keys: list[object]
) -> None:
    assert _stream_keys(command, args) == keys


async def test_the_gate_bounds_operations_in_flight_and_is_taken_once_per_operation() -> None:
    """At most `in_flight` commands or pipelines at once; what redis-py runs inside one
    (commands sent one by one after a MOVED, in tasks of its own too) does not take the
    gate again, which could wait for good with every slot held by pipelines."""
    gate = asyncio.Semaphore(2)
    running, most = 0, 0

    async def command() -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return "done"

    results = await asyncio.gather(*(_within(gate, command) for _ in range(10)))
    assert results == ["done"] * 10 and most == 2

    async def pipeline() -> list[str]:  # holds a slot; what it runs inside takes none
        inside = [_within(gate, command) for _ in range(3)]
        return list(await asyncio.gather(*inside))

    both = asyncio.gather(_within(gate, pipeline), _within(gate, pipeline))
    assert await asyncio.wait_for(both, 5) == [["done"] * 3] * 2
