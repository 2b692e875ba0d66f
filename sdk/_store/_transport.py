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
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["ClosedWrites", "Connection", "SSLConnection", "UnixConnection", "closed_writes"]


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


class Connection(ClosedWrites, aioredis.Connection):  # type: ignore[misc]  # redis is Any
    pass


class SSLConnection(ClosedWrites, aioredis.SSLConnection):  # type: ignore[misc]
    pass


class UnixConnection(ClosedWrites, aioredis.UnixDomainSocketConnection):  # type: ignore[misc]
    pass


_OURS: dict[type, type] = {
    aioredis.Connection: Connection,
    aioredis.SSLConnection: SSLConnection,
    aioredis.UnixDomainSocketConnection: UnixConnection,
}


def closed_writes(connection_class: type) -> type:
    """Ours for one of redis-py's connection classes (a class that has it already as is)."""
    if issubclass(connection_class, ClosedWrites):
        return connection_class
    try:
        return _OURS[connection_class]
    except KeyError:
        raise TypeError(f"no ClosedWrites form of {connection_class.__name__}") from None
