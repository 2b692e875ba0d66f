"""Commands packed in C (PackedInC) are byte for byte what redis-py packs, and what redis-py
refuses is refused the same way."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from longline._store._transport import Connection, PackedInC, SSLConnection, UnixConnection

CASES = [
    ("GET", "k"),
    ("SET", "k", "välue 🎈", b"\x00\xff\r\n"),
    ("EVALSHA", "abc", 2, "{p}:a", "{p}:b", 1.5, -3, 10**30, 0.1, 1e100, float("inf"), 1 / 3),
    ("CLIENT KILL", "ID", 5),  # words of a command name go as separate arguments
    (b"CLIENT LIST",),
    ("HSET", "h", "", ""),
    ("SET", "big", "x" * 100_000),  # redis-py sends it in chunks: the same bytes
    ("X", memoryview(b"mv"), bytearray(b"ba")),  # hiredis refuses these: redis-py packs them
]


@pytest.mark.parametrize("args", CASES)
def test_the_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    ours = b"".join(bytes(p) for p in Connection(decode_responses=True).pack_command(*args))
    theirs = aioredis.Connection(decode_responses=True).pack_command(*args)
    assert ours == b"".join(bytes(p) for p in theirs)
    pipeline = [args, ("PING",)]
    ours_many = Connection(decode_responses=True).pack_commands(pipeline)
    theirs_many = aioredis.Connection(decode_responses=True).pack_commands(pipeline)
    assert b"".join(map(bytes, ours_many)) == b"".join(map(bytes, theirs_many))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_redis_py_refuses_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError, match="Invalid input of type"):
        Connection().pack_command("SET", "k", bad)


def test_every_connection_class_packs_in_c() -> None:
    from longline._store._sentinel import _Connection

    for cls in (Connection, SSLConnection, UnixConnection, _Connection):
        assert issubclass(cls, PackedInC), cls
