"""Redis Cluster: the `redis+cluster://` URL and a client that follows the cluster's slots.

The URL names some nodes of the cluster (seeds); the client learns every node and which
slots each serves from them, and follows MOVED and failovers by itself:

    redis+cluster://[[user]:password@]host1:port1[,host2:port2,...][?option=value...]
    rediss+cluster://...  (TLS to every node)

- `user` and `password` authenticate to every node (as in redis://). Percent-encode
  reserved characters. A host without a port means 6379; IPv6 hosts go in brackets.
- A cluster has one database: a path (/DB) is refused.
- Options for TLS, as for rediss://: ssl_ca_certs, ssl_certfile, ssl_keyfile,
  ssl_cert_reqs (required, optional, none), ssl_check_hostname (true, false).

Every key longline's scripts touch carries its partition's hash tag (see `_keys`), so every
script and MULTI runs on one node.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.exceptions import RedisClusterException

# One host:port grammar, one reading of user:password@, one redaction.
from ._sentinel import _HOST, _credentials, _redacted
from ._transport import closed_writes

__all__ = ["SCHEMES", "ClusterURL", "cluster_client", "parse_cluster_url"]

SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
FORM = (
    "redis+cluster://[[user]:password@]host:port[,host:port,...][?option=...] "
    "(rediss+cluster:// for TLS), e.g. redis+cluster://10.0.0.1:6379,10.0.0.2:6379"
)
_TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


@dataclass(frozen=True)
class ClusterURL:
    """A parsed `redis+cluster://` URL."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never a password in a log line or a traceback
        where = ",".join(f"{h}:{p}" for h, p in self.seeds)
        return f"ClusterURL({SCHEMES[self.tls]}://{where})"


def _bad(url: str, problem: str) -> ValueError:
    return ValueError(f"Redis URL {_redacted(url)!r} {problem}; expected {FORM}")


def parse_cluster_url(url: str) -> ClusterURL:
    """The parts of a `redis+cluster://` URL; ValueError that says what to fix."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [IPv6 address
        raise _bad(url, f"is not a URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise _bad(url, "does not start with redis+cluster:// or rediss+cluster://")
    if parts.fragment:
        raise _bad(url, "has a #fragment")
    if parts.path not in ("", "/"):
        raise _bad(url, "has a path: a Redis Cluster has one database, so write no /DB")
    username, password, hostlist = _credentials(parts.netloc, lambda problem: _bad(url, problem))
    if not hostlist:
        raise _bad(url, "names no node")
    seeds = []
    # An address is not shown in an error: a password with a '?', '#' or '/' in it, not
    # percent-encoded, ends the URL's address part early and would be shown instead.
    for i, item in enumerate(hostlist.split(","), 1):
        match = _HOST.match(item.strip())
        if not match or not (match["v6"] or re.fullmatch(r"[A-Za-z0-9._-]+", match["name"])):
            raise _bad(
                url,
                f"has a node address (the {i}th) that is not host:port (percent-encode "
                "'?', '#', '/' and '@' in a password)",
            )
        host = match["v6"] or match["name"]
        port = match["port"]
        if port is None:
            seeds.append((host, DEFAULT_PORT))
        elif port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            seeds.append((host, int(port)))
        else:
            raise _bad(url, f"has a node address (the {i}th) whose port is not 1-65535")
    tls = parts.scheme == SCHEMES[1]
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_TLS_OPTIONS))
    if unknown:
        raise _bad(
            url, f"has unknown option(s) {', '.join(unknown)} (known: {', '.join(_TLS_OPTIONS)})"
        )
    if query and not tls:
        raise _bad(url, "has TLS options but does not start with rediss+cluster://")
    options: dict[str, Any] = dict(query)
    if "ssl_check_hostname" in options:
        value = options["ssl_check_hostname"].lower()
        if value not in ("true", "false"):
            raise _bad(url, "has ssl_check_hostname that is not true or false")
        options["ssl_check_hostname"] = value == "true"
    if options.get("ssl_cert_reqs", "required") not in ("required", "optional", "none"):
        raise _bad(url, "has ssl_cert_reqs that is not required, optional or none")
    return ClusterURL(tuple(seeds), tls, username, password, options)


class _ClusterClient(aioredis.RedisCluster):  # type: ignore[misc]
    """redis-py's cluster client, told where XREADGROUP's keys are.

    redis-py finds the keys of a command whose keys move (XREADGROUP, XREAD) by asking one
    node, the same one every time, with COMMAND GETKEYS: a round trip more per queue read,
    and that node served twice as many commands as the others under load (measured by
    tests/integration/test_cluster_balance.py). The keys of XREADGROUP are the first half
    of what follows STREAMS."""

    def __init__(self, *args: Any, in_flight: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every node's connections (the seeds', and those of nodes found later) fail a write
        # to a connection that just closed as a ConnectionError (see _transport); redis-py's
        # cluster client picks its connection class itself.
        manager = self.nodes_manager
        manager.connection_kwargs["connection_class"] = closed_writes(
            manager.connection_kwargs["connection_class"]
        )
        for node in manager.startup_nodes.values():
            node.connection_class = closed_writes(node.connection_class)
        # connect()'s max_connections: commands (and pipelines) in flight at once, across
        # the nodes. redis-py's own bound is per node, and raises when reached instead of
        # waiting; this one waits, as a single server's blocking pool does.
        self._gate = asyncio.Semaphore(in_flight) if in_flight > 0 else None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await _within(self._gate, super().execute_command, *args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if self._gate is None:
            return super().pipeline(transaction, shard_hint)
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _GatedPipeline(self, transaction)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        keys = _stream_keys(command, args)
        if keys:
            slots = {int(self.keyslot(key)) for key in keys}
            if len(slots) == 1:
                return slots.pop()
        return int(await super()._determine_slot(command, *args))


class _GatedPipeline(ClusterPipeline):  # type: ignore[misc]
    """A cluster pipeline that counts as one command in flight of its client's gate (it
    holds at most one connection per node while it runs)."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        return await _within(
            self.cluster_client._gate, super().execute, raise_on_error, allow_redirections
        )


# Set while a task (and the tasks it starts) runs inside the gate: what redis-py does
# inside a pipeline (commands sent one by one after a MOVED) is part of what was counted.
# Taking the gate again there could wait for good, with every slot held by pipelines.
_INSIDE: ContextVar[bool] = ContextVar("longline_inside_the_gate", default=False)


async def _within(
    gate: asyncio.Semaphore | None,
    call: Callable[..., Awaitable[Any]],
    *args: Any,
    **kwargs: Any,
) -> Any:
    if gate is None or _INSIDE.get():
        return await call(*args, **kwargs)
    async with gate:
        token = _INSIDE.set(True)
        try:
            return await call(*args, **kwargs)
        finally:
            _INSIDE.reset(token)


def _stream_keys(command: str, args: tuple[Any, ...]) -> list[Any]:
    """The streams of an XREADGROUP or XREAD as redis-py sends it, or [] when the command is
    another or has a shape this does not know (redis-py then asks the server):
    XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS key... id...,
    XREAD [COUNT n] [BLOCK ms] STREAMS key... id... (names and ids may read "STREAMS")."""
    name = command.upper()
    if name not in ("XREADGROUP", "XREAD"):
        return []
    i = 3 if name == "XREADGROUP" else 0
    while i < len(args):
        word = args[i].decode() if isinstance(args[i], bytes) else args[i]
        word = word.upper() if isinstance(word, str) else ""
        if word in ("COUNT", "BLOCK"):
            i += 2
        elif word == "NOACK":
            i += 1
        elif word == "STREAMS":
            rest = args[i + 1 :]
            return list(rest[: len(rest) // 2]) if rest and len(rest) % 2 == 0 else []
        else:
            return []
    return []


def cluster_client(
    parsed: ClusterURL, options: dict[str, Any], in_flight: int = 0
) -> aioredis.RedisCluster:
    """A client of the cluster `parsed` names, with connect()'s `options` for every node;
    with `in_flight`, at most that many commands and pipelines at once (callers wait)."""
    return _ClusterClient(
        in_flight=in_flight,
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **parsed.options,
        **options,
    )
