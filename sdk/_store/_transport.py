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

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = [
    "ClosedWrites",
    "Connection",
    "PackedInC",
    "QuickCheckout",
    "QuickPool",
    "SSLConnection",
    "UnixConnection",
    "closed_writes",
]


class ClosedWrites:
    """Mixed in before a redis-py connection class (see the module)."""

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().send_packed_command(*args, **kwargs)  # type: ignore[misc]
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):
                raise
            # redis-py closed the connection already; the next command opens a new one.
            raise RedisConnectionError(f"Error writing to Redis: {exc}") from exc


class PackedInC:
    """Mixed in before a redis-py connection class: commands packed by hiredis, in C, where
    redis-py's asyncio connection packs them in Python (4-5% of a control plane's CPU in
    B1). The bytes are the same (tests/unit/test_transport.py); an argument hiredis refuses
    (not str, bytes, int or float) goes to redis-py's packer, for its own DataError."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):  # "CLIENT KILL": words of a command name go separately
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a bytearray, a memoryview, or an argument redis-py refuses
            return super().pack_command(*args)  # type: ignore[misc,no-any-return]


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
    not closing. Anything else, or a redis-py whose insides differ, is a no: the pool's own way
    then checks it and reconnects."""
    try:
        reader, writer, parser = conn._reader, conn._writer, conn._parser
        if reader is None or writer is None or conn._should_reconnect or not parser._connected:
            return False
        if reader._buffer or reader.at_eof() or reader.exception() is not None:
            return False
        return not (parser._reader.has_data() or writer.transport.is_closing())
    except AttributeError:
        return False


class QuickCheckout:
    """Mixed in before redis-py's BlockingConnectionPool: an idle connection sound as it is
    (ready_as_is) goes to the caller at once while nobody waits for one, and comes back to
    the idle list at once while nobody waits; else redis-py's own way (its condition, its
    check, a new connection up to the pool's bound, a waiter woken). Connections are only
    ever taken from the idle list here, never made: the pool's bound holds."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        idle = self._available_connections  # type: ignore[attr-defined]
        condition = self._condition  # type: ignore[attr-defined]
        if idle and not condition._waiters and not condition.locked():
            conn = idle.pop()
            if ready_as_is(conn):
                self._in_use_connections.add(conn)  # type: ignore[attr-defined]
                return conn
            idle.append(conn)  # redis-py's way below checks it, and reconnects it
        return await super().get_connection()  # type: ignore[misc]

    async def release(self, connection: Any) -> None:
        condition = self._condition  # type: ignore[attr-defined]
        if condition._waiters or condition.locked() or connection.should_reconnect():
            await super().release(connection)  # type: ignore[misc]  # wakes a waiter
            return
        self._in_use_connections.remove(connection)  # type: ignore[attr-defined]
        self._available_connections.append(connection)  # type: ignore[attr-defined]


class QuickPool(QuickCheckout, aioredis.BlockingConnectionPool):  # type: ignore[misc]
    """BlockingConnectionPool with QuickCheckout."""
