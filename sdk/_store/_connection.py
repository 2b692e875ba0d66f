"""The connection to Redis: how every longline process opens its client.

Owns no key. `connect` answers str, bounds the connection count, and on Python 3.11 reads
without a socket timeout (see below); `redis+sentinel://` URLs go through `_sentinel`.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import redis.asyncio as aioredis

from . import _sentinel
from ._sentinel import check_redis_url

__all__ = ["Redis", "check_redis_url", "connect", "redis_time_ms"]

Redis = aioredis.Redis  # the client type the store's parts are built on


# Python 3.11's asyncio.timeout can swallow a task's cancellation while redis-py waits for a
# reply inside it, leaving the task hung for good (a StreamRun whose client left, a run being
# cancelled mid-write). 3.12 fixed it. On 3.11 we therefore read without a socket timeout and
# find dead connections with TCP keepalive instead.
_TIMEOUTS_ARE_CANCEL_SAFE = sys.version_info >= (3, 12)
_KEEPALIVE = {
    opt: value
    for opt, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 10),
        (getattr(socket, "TCP_KEEPINTVL", None), 5),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if opt is not None
}


def connect(
    url: str, *, max_connections: int = 0, socket_timeout: float | None = 10.0, **kwargs: Any
) -> aioredis.Redis:
    """A client for `url` that answers str, the way every longline process talks to Redis.

    `url` is redis://, rediss:// or unix:// as redis-py reads them, or
    redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE_NAME[/DB] for a
    primary found through Sentinel, followed across failovers (see `_sentinel`). A
    malformed URL is a ValueError; check_redis_url says what to fix in any of them.
    With max_connections, callers wait for a free connection instead of opening more:
    the number of Redis connections of a process stays bounded whatever its load.
    A connection that holds a subscription passes socket_timeout=None.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "protocol": 2,  # reply shapes must not depend on what the server offers
        "socket_timeout": socket_timeout if _TIMEOUTS_ARE_CANCEL_SAFE else None,
        "socket_connect_timeout": 10.0 if _TIMEOUTS_ARE_CANCEL_SAFE else None,
        "socket_keepalive": True,
        "socket_keepalive_options": _KEEPALIVE,
        **kwargs,
    }
    if url.startswith(_sentinel.SCHEME + ":"):
        parsed = _sentinel.parse_sentinel_url(url)
        return _sentinel.sentinel_client(parsed, max_connections=max_connections, options=options)
    if max_connections:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, **options
        )
        return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    return aioredis.Redis.from_url(url, **options)


async def redis_time_ms(redis: aioredis.Redis) -> int:
    """Redis's clock, in ms: every process measures leases and presence by this one clock."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
