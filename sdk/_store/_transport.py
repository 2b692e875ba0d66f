"""Connections whose writes fail the way every other lost connection does.

Owns no key. uvloop, the planes' event loop, raises RuntimeError ("unable to perform
operation on <TCPTransport closed=True ...>; the handler is closed") when a command is
written to a connection whose peer has just gone, a Redis killed or failed over: asyncio's
own loop drops such a write, and the read that follows finds the connection closed. redis-py
checks a pooled connection before it hands it out, but a peer that reset the connection
leaves no end-of-file to find, so the write is the first to meet it; redis-py takes the
RuntimeError for a bug and passes it on, and a control plane answered GetRun with INTERNAL
in the middle of a failover. Raised as the ConnectionError it is, it is what every caller
already handles: UNAVAILABLE to a client (who retries), a loop's backoff.

Commands packed by hiredis in C rather than by redis-py in Python (PackedInC), the same
bytes. And a pool that hands out an idle connection at once (QuickCheckout). redis-py's
BlockingConnectionPool takes its condition's lock, arms a timer, records its metrics and
checks the connection on every command and again when it gets the connection back: about
half of what a command cost a control plane (tests/bench/commands.py, 56-58 against 29-32
µs of CPU per command). The check redis-py makes is one of what the event loop knows
already (the connection open, nothing unread, no end-of-file), without a system call; made
here without the rest, it is the same check.
"""

from __future__ import annotations

import contextlib
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

__all__ = [
    "CLOSED",
    "ClosedWrites",
    "ClosesForGood",
    "Connection",
    "PackedInC",
    "Pool",
    "QuickCheckout",
    "QuickPool",
    "SSLConnection",
    "UnixConnection",
    "closed_writes",
]


CLOSED = "the Redis client is closed: no connection of it is opened again"


class ClosedWrites:
    """Mixed in before a redis-py connection class (see the module). Also: once its pool
    was closed (ClosesForGood), it never connects again."""

    closed_for_good = False  # set on it by its pool's aclose()

    # Both ways in: connect() (first, as Sentinel's asks the sentinels for the primary
    # before it connects) and connect_check_health() (where a command's write connects).
    async def connect(self) -> None:
        self._refuse_if_closed()
        await super().connect()  # type: ignore[misc]

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        self._refuse_if_closed()
        await super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        if self.closed_for_good:  # its pool closed while it was connecting: not left open
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError(CLOSED)

    def _refuse_if_closed(self) -> None:
        if self.closed_for_good and not self.is_connected:  # type: ignore[attr-defined]
            raise RedisConnectionError(CLOSED)

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().send_packed_command(*args, **kwargs)  # type: ignore[misc]
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):
                raise
            # redis-py closed the connection already; the next command opens a new one.
            raise RedisConnectionError(f"Error writing to Redis: {exc}") from exc


# Ints hiredis packs: it turns one into text without checking that Python could (an int of
# more than 4,300 digits cannot be, and hiredis then reads a null pointer: a crash).
_INT_BOUND = 2**64


class PackedInC:
    """Mixed in before a redis-py connection class: commands packed by hiredis, in C, where
    redis-py's asyncio connection packs them in Python (3-5% of a control plane's CPU in
    B1). The bytes are the same (tests/unit/test_transport.py). Only what hiredis packs as
    redis-py would goes to it: arguments of exactly str, bytes, float or an int within
    ±2**64, on a connection that encodes text as strict UTF-8 (the default); anything else
    (a bytearray, a memoryview, a subclass, another encoding, what redis-py refuses with its
    DataError) goes to redis-py's packer."""

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder  # type: ignore[attr-defined]
        if encoder.encoding != "utf-8" or encoder.encoding_errors != "strict":
            return super().pack_command(*args)  # type: ignore[misc,no-any-return]
        for arg in args:
            kind = type(arg)
            if not (
                kind is str
                or kind is bytes
                or (kind is int and -_INT_BOUND < arg < _INT_BOUND)
                or kind is float
            ):
                return super().pack_command(*args)  # type: ignore[misc,no-any-return]
        first = args[0]
        if type(first) is str:  # "CLIENT KILL": words of a command name go separately
            args = (*first.encode().split(), *args[1:])
        elif type(first) is bytes and b" " in first:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


class Connection(PackedInC, ClosedWrites, aioredis.Connection):  # type: ignore[misc]  # redis: Any
    pass


class SSLConnection(PackedInC, ClosedWrites, aioredis.SSLConnection):  # type: ignore[misc]
    pass


class UnixConnection(PackedInC, ClosedWrites, aioredis.UnixDomainSocketConnection):  # type: ignore[misc]
    pass


_OURS: dict[type, type] = {
    aioredis.Connection: Connection,
    aioredis.SSLConnection: SSLConnection,
    aioredis.UnixDomainSocketConnection: UnixConnection,
}


def closed_writes(connection_class: type) -> type:
    """Ours for one of redis-py's connection classes, with ClosedWrites and PackedInC (a
    class that has them already as is)."""
    if issubclass(connection_class, ClosedWrites):
        return connection_class
    try:
        return _OURS[connection_class]
    except KeyError:
        raise TypeError(f"no ClosedWrites form of {connection_class.__name__}") from None


def ready_as_is(conn: Any) -> bool:
    """Whether a pooled connection can carry the next command as it is, by what the event loop
    knows already (redis-py's own check in ensure_connection, without a system call either):
    open, not told to reconnect, nothing unread, no end-of-file or error seen, its transport
    not closing. AttributeError from a redis-py (or Python) whose insides differ."""
    reader, writer, parser = conn._reader, conn._writer, conn._parser
    if reader is None or writer is None or conn._should_reconnect or not parser._connected:
        return False
    if reader._buffer or reader.at_eof() or reader.exception() is not None:
        return False
    return not (parser._reader.has_data() or writer.transport.is_closing())


class ClosesForGood:
    """Mixed in before a redis-py pool: after aclose() none of its connections opens again,
    neither one handed out later (a ConnectionError) nor one a command was on when it closed
    (its ClosedWrites refuses). redis-py's pool opens a connection for whoever asks, closed
    or not, and one opened after the close is closed by nobody: a task that outlived its
    owner's shutdown left a socket open until the garbage collector found it."""

    _closed_for_good = False

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._closed_for_good:
            raise RedisConnectionError(CLOSED)
        return await super().get_connection(*args, **kwargs)  # type: ignore[misc]

    def make_connection(self) -> Any:  # one a caller woken after the close would make
        conn = super().make_connection()  # type: ignore[misc]
        conn.closed_for_good = self._closed_for_good
        return conn

    async def aclose(self) -> None:
        self._closed_for_good = True
        for conn in (*self._available_connections, *self._in_use_connections):  # type: ignore[attr-defined]
            conn.closed_for_good = True
        await super().aclose()  # type: ignore[misc]


class Pool(ClosesForGood, aioredis.ConnectionPool):  # type: ignore[misc]
    """redis-py's ConnectionPool with ClosesForGood (no bound)."""


class QuickCheckout(ClosesForGood):
    """Mixed in before redis-py's BlockingConnectionPool: an idle connection sound as it is
    (ready_as_is) goes to the caller at once while nobody waits for one, and comes back to
    the idle list at once while nobody waits; else redis-py's own way (its condition, its
    check, a new connection up to the pool's bound, a waiter woken). Connections are only
    ever taken from the idle list here, never made: the pool's bound holds."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self._closed_for_good:
            raise RedisConnectionError(CLOSED)
        try:
            idle = self._available_connections  # type: ignore[attr-defined]
            condition = self._condition  # type: ignore[attr-defined]
            if idle and not condition._waiters and not condition.locked():
                conn = idle[-1]
                if ready_as_is(conn):
                    idle.pop()
                    self._in_use_connections.add(conn)  # type: ignore[attr-defined]
                    return conn
                # Closed here, so that redis-py's way below opens it again: its own check
                # passes a connection the peer reset (an error on the reader, no end-of-file).
                with contextlib.suppress(RedisError, OSError):
                    await conn.disconnect(nowait=True)
        except AttributeError:  # a redis-py (or Python) whose insides differ: its own way
            pass
        return await super().get_connection()

    async def release(self, connection: Any) -> None:
        try:
            condition = self._condition  # type: ignore[attr-defined]
            quick = not (condition._waiters or condition.locked() or connection.should_reconnect())
        except AttributeError:
            quick = False
        if not quick:
            await super().release(connection)  # type: ignore[misc]  # wakes a waiter
            return
        self._in_use_connections.remove(connection)  # type: ignore[attr-defined]
        self._available_connections.append(connection)  # type: ignore[attr-defined]


class QuickPool(QuickCheckout, aioredis.BlockingConnectionPool):  # type: ignore[misc]
    """BlockingConnectionPool with QuickCheckout."""
