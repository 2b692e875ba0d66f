"""Commands packed in C (PackedInC) are byte for byte what redis-py packs, and what redis-py
refuses is refused the same way."""

from __future__ import annotations

from http import HTTPStatus

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
    # Not given to hiredis, which packs a non-contiguous memoryview wrong: redis-py packs them
    ("X", memoryview(b"mv"), bytearray(b"ba"), memoryview(b"abcdef")[::2]),
    ("X", HTTPStatus.OK, 2**64, -(2**64), 2**63),  # an int subclass; ints past ±2**64
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


def test_another_encoding_is_packed_as_redis_py_packs_it() -> None:
    for options in ({"encoding": "latin-1"}, {"encoding_errors": "surrogateescape"}):
        args = ("SET", "k", "é\udcff" if "encoding_errors" in options else "é")
        ours = Connection(**options).pack_command(*args)
        assert b"".join(ours) == b"".join(aioredis.Connection(**options).pack_command(*args))


def test_an_int_python_cannot_write_out_is_its_error_not_a_crash() -> None:
    """hiredis would turn it into text without checking, and crash the process."""
    with pytest.raises(ValueError, match="4300"):
        Connection().pack_command("SET", "k", 10**5000)


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_redis_py_refuses_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError, match="Invalid input of type"):
        Connection().pack_command("SET", "k", bad)


def test_every_connection_class_packs_in_c() -> None:
    from longline._store._sentinel import _Connection

    for cls in (Connection, SSLConnection, UnixConnection, _Connection):
        assert issubclass(cls, PackedInC), cls
