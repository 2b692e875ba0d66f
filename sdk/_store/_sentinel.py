"""Redis behind Sentinel: the `redis+sentinel://` URL and a client that follows failovers.

The URL names the sentinels, not the primary:

    redis+sentinel://[[user]:password@]host1:port1[,host2:port2,...]/SERVICE_NAME[/DB]
                     [?sentinel_password=SECRET]

- `user` and `password` authenticate to the Redis primary (as in redis://); the sentinels
  get `sentinel_password` (nothing by default). Percent-encode reserved characters.
- A host without a port means 26379, Sentinel's own port; IPv6 hosts go in brackets.
- SERVICE_NAME is the name the sentinels monitor (`sentinel monitor SERVICE_NAME ...`);
  DB defaults to 0.

The client is redis-py's own (`Sentinel.master_for`): every new connection asks the
sentinels where the primary is, so after a failover reconnecting is enough. Connections to
the old primary end by themselves: a killed primary closes them, and Sentinel sends
`CLIENT KILL` to every client of a primary it demotes; a command that still meets a demoted
primary gets READONLY, which redis-py turns into a ConnectionError after dropping that
connection (`SentinelManagedConnection.read_response`), and Redis 6's wording of the same
reply from a script is handled here too (`_Connection`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ._transport import ClosedWrites, ClosesForGood, PackedInC, QuickCheckout, closed_writes

__all__ = ["SCHEME", "SentinelURL", "check_redis_url", "parse_sentinel_url", "sentinel_client"]

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
FORM = (
    "redis+sentinel://[[user]:password@]host:port[,host:port,...]/SERVICE_NAME[/DB]"
    "[?sentinel_password=...], e.g. redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0"
)
_QUERY = ("sentinel_password",)
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>[^:]*))?$")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:  # never a password in a log line or a traceback
        where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelURL({SCHEME}://{where}/{self.service_name}/{self.db})"


def _bad(url: str, problem: str) -> ValueError:
    return ValueError(f"Redis URL {_redacted(url)!r} {problem}; expected {FORM}")


def _credentials(
    netloc: str, bad: Callable[[str], ValueError]
) -> tuple[str | None, str | None, str]:
    """(username, password, host list) of a URL's [[user]:password@]hosts part, percent-
    decoded; a user with no password is `bad` (redis+sentinel:// and redis+cluster:// alike)."""
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        return None, None, hostlist
    user, colon, secret = userinfo.partition(":")
    username = unquote(user) or None
    password = unquote(secret) if colon else None
    if username and password is None:
        raise bad("has a user but no password (write user:password@, or :password@)")
    return username, password, hostlist


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hosts}"


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a `redis+sentinel://` URL; ValueError that says what to fix."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise _bad(url, f"does not start with {SCHEME}://")
    if parts.fragment:
        raise _bad(url, "has a #fragment")
    username, password, hostlist = _credentials(parts.netloc, lambda problem: _bad(url, problem))
    if not hostlist:
        raise _bad(url, "names no sentinel")
    sentinels = []
    for item in hostlist.split(","):
        match = _HOST.match(item.strip())
        if not match:
            raise _bad(url, f"has a sentinel address {item!r} that is not host:port")
        host = match["v6"] or match["name"]
        port = match["port"]
        if port is None:
            sentinels.append((host, DEFAULT_PORT))
        elif port.isdigit() and 0 < int(port) < 65536:
            sentinels.append((host, int(port)))
        else:
            raise _bad(url, f"has a sentinel address {item!r} whose port is not 1-65535")
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if path and path[-1] == "":
        path.pop()  # a trailing slash
    if not path or not path[0]:
        raise _bad(url, "names no service (the name the sentinels monitor)")
    if len(path) > 2:
        raise _bad(url, "has more than SERVICE_NAME/DB in its path")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise _bad(url, f"has a database {path[1]!r} that is not a number")
        db = int(path[1])
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_QUERY))
    if unknown:
        raise _bad(url, f"has unknown option(s) {', '.join(unknown)} (known: {', '.join(_QUERY)})")
    return SentinelURL(
        sentinels=tuple(sentinels),
        service_name=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password") or None,
    )


def check_redis_url(url: str) -> None:
    """ValueError, saying what to fix, unless connect() can use `url`; checked at start-up,
    so that a typo stops a process at once rather than in its first Redis call."""
    if url.startswith(SCHEME + ":"):
        parse_sentinel_url(url)
        return
    try:
        parse_url(url)
    except ValueError as exc:
        raise ValueError(
            f"Redis URL {_redacted(url)!r} is not usable ({exc}); expected "
            "redis://[[user]:password@]host[:port][/DB], rediss://... for TLS, "
            f"unix:///path/to/socket, for Sentinel {FORM}, or for Redis Cluster "
            "redis+cluster://[[user]:password@]host:port[,host:port,...]"
        ) from None


class _Connection(PackedInC, ClosedWrites, SentinelManagedConnection):  # type: ignore[misc]
    """redis-py's connection to the primary, plus Redis 6's READONLY from inside a script,
    and a write to a connection that just closed failing as a ConnectionError, and commands
    packed in C (_transport).

    Redis 7 answers a write from a script on a replica with READONLY, which redis-py
    handles; Redis 6 wraps it as "ERR Error running script ... READONLY ...". Either way the
    connection is on a demoted primary: drop it, so the next attempt asks the sentinels.
    """

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if "READONLY You can't write against a read only replica" not in str(exc):
                raise
            await self.disconnect()
            raise RedisConnectionError("the Redis primary was demoted to a replica") from exc


class _Pool(ClosesForGood, SentinelConnectionPool):  # type: ignore[misc]  # redis: Any
    """Closes the sentinel clients with the pool: one connect(), one Sentinel, one owner;
    and opens no connection once closed (ClosesForGood)."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


class _BlockingPool(QuickCheckout, _Pool, aioredis.BlockingConnectionPool):  # type: ignore[misc]
    """With max_connections, callers wait for a free connection instead of opening more.

    SentinelConnectionPool only overrides where a connection goes (the primary the
    sentinels name), BlockingConnectionPool only how one is handed out, so the two compose;
    QuickCheckout hands out an idle connection at once (_transport). A new primary makes
    SentinelConnectionPool disconnect the idle connections, which QuickCheckout passes over.
    """


def sentinel_client(
    parsed: SentinelURL, *, max_connections: int, options: dict[str, Any]
) -> aioredis.Redis:
    """A client of the primary that `parsed` names, with connect()'s `options`."""
    # The sentinels get the socket settings of the data connections; nothing else applies
    # to them (they have no databases, and a client name would be one more command).
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    # One try per sentinel: a dead one is passed over for the next at once, where redis-py's
    # default for a client (three retries with backoff) would hold up every reconnection.
    sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    # Its connections to the sentinels too fail a write after a reset as a ConnectionError
    # (_transport): redis-py then asks the next sentinel instead of giving up on a
    # RuntimeError. (Redis() takes no connection class: set on each sentinel's pool.)
    for each in sentinel.sentinels:
        each.connection_pool.connection_class = closed_writes(each.connection_pool.connection_class)
    pool_options: dict[str, Any] = {
        **options,
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
        "connection_class": _Connection,
    }
    if max_connections:
        pool_class: type[SentinelConnectionPool] = _BlockingPool
        pool_options.update(max_connections=max_connections, timeout=None)
    else:
        pool_class = _Pool
    client: aioredis.Redis = sentinel.master_for(
        parsed.service_name, connection_pool_class=pool_class, **pool_options
    )
    return client
