"""The connection to Redis: how every longline process opens its client.

Owns no key. `connect` answers str, bounds the connection count, and on Python 3.11 reads
without a socket timeout (see below); `redis+sentinel://` URLs go through `_sentinel`.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException

from . import _cluster, _sentinel, _transport

__all__ = [
    "Redis",
    "ScriptCall",
    "check_redis_url",
    "connect",
    "is_cluster",
    "ready_to_subscribe",
    "redis_time_ms",
    "scripts_together",
]

# A script call: the registered script, its KEYS, its ARGV.
ScriptCall = tuple[Any, Sequence[Any], Sequence[Any]]
_CLUSTER_NODE_POOL = 256  # connections per cluster node, at most
_CLUSTER_IN_FLIGHT = 16  # script calls of one batch sent at once on a cluster

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

    `url` is redis://, rediss:// or unix:// as redis-py reads them,
    redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE_NAME[/DB] for a
    primary found through Sentinel, followed across failovers (see `_sentinel`), or
    redis+cluster://[[user]:password@]host:port[,host:port...] (rediss+cluster:// for TLS)
    for a Redis Cluster, whose slots the client follows (see `_cluster`). A
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
    if url.startswith(tuple(s + ":" for s in _cluster.SCHEMES)):
        # A pool per node. redis-py's cluster client raises (MaxConnectionsError) rather
        # than wait when a node's pool is full: room for every caller of a process, with
        # batches of scripts bounded in flight (scripts_together).
        options["max_connections"] = max(max_connections, _CLUSTER_NODE_POOL)
        return _cluster.cluster_client(
            _cluster.parse_cluster_url(url), options, in_flight=max_connections
        )
    if url.startswith("unix:"):  # a Unix socket has no TCP keepalive
        options.pop("socket_keepalive")
        options.pop("socket_keepalive_options")
    if max_connections:
        # An idle connection is handed out without redis-py's ceremony (see _transport).
        pool = _transport.QuickPool.from_url(
            url, max_connections=max_connections, timeout=None, **options
        )
    else:
        pool = _transport.Pool.from_url(url, **options)
    # Writes to a connection that just closed fail as a ConnectionError (see _transport).
    # Set here: from_url picks the class of the URL's scheme (TCP, TLS, Unix socket) itself.
    pool.connection_class = _transport.closed_writes(pool.connection_class)
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


async def redis_time_ms(redis: aioredis.Redis) -> int:
    """Redis's clock, in ms: every process measures leases and presence by this one clock."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def is_cluster(redis: Any) -> bool:
    """Whether `redis` is a Redis Cluster client (it pipelines no scripts; see _together)."""
    return isinstance(redis, aioredis.RedisCluster)


def check_redis_url(url: str) -> None:
    """ValueError, saying what to fix, unless connect() can use `url`; checked at start-up,
    so that a typo stops a process at once rather than in its first Redis call."""
    if url.startswith(tuple(s + ":" for s in _cluster.SCHEMES)):
        _cluster.parse_cluster_url(url)
        return
    _sentinel.check_redis_url(url)


def pipelined(pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue one script call on a pipeline, as EVALSHA (see scripts_together)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


async def scripts_together(
    redis: Any, calls: Sequence[ScriptCall], *, raise_on_error: bool = True
) -> list[Any]:
    """Several script calls in one round trip (a pipeline); on a Redis Cluster, whose client
    pipelines no script, side by side (a round trip each, at once). With raise_on_error
    False, a call that failed answers with its exception and the others stand."""
    if not calls:
        return []
    if is_cluster(redis):
        gate = asyncio.Semaphore(_CLUSTER_IN_FLIGHT)

        async def one(script: Any, k: Sequence[Any], a: Sequence[Any]) -> Any:
            async with gate:
                return await script(keys=k, args=a)

        # Every call ends before this returns (none left holding a connection), each
        # answer or error in its place.
        gathered = await asyncio.gather(*(one(*call) for call in calls), return_exceptions=True)
        for reply in gathered:
            if isinstance(reply, BaseException) and not isinstance(reply, Exception):
                raise reply  # a cancellation
            if raise_on_error and isinstance(reply, Exception):
                raise reply
        return list(gathered)
    # EVALSHA by hand: a pipeline given the scripts themselves asks SCRIPT EXISTS first, a
    # round trip more every time. A script the server does not have (it restarted, or
    # SCRIPT FLUSH) fails alone with NOSCRIPT, having run nothing: it is loaded and run again.
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            for i in todo:
                pipelined(pipe, *calls[i])
            answers = await pipe.execute(raise_on_error=False)
        missing = []
        for i, answer in zip(todo, answers, strict=True):
            replies[i] = answer
            if isinstance(answer, NoScriptError):
                missing.append(i)
        if not missing:
            break
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            script.sha = await redis.script_load(script.script)
        todo = missing
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


async def ready_to_subscribe(redis: Any) -> None:
    """Make a cluster client learn the cluster's slots before a subscription picks its node
    by them (a plain client needs nothing)."""
    if is_cluster(redis):
        try:
            await redis.initialize()
        except RedisClusterException as exc:  # no node answers: not a RedisError
            raise RedisConnectionError(f"the Redis Cluster cannot be reached: {exc}") from exc
