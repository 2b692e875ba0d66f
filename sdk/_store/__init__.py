"""The Redis store: every Redis command of longline, in modules named by the data they hold.

The planes never import each other and never talk to Redis themselves: they meet over gRPC,
Redis and this package's public names (below). Everything that must be atomic is one Lua
script (`_scripts`) or one MULTI. Each module owns its keys (`_keys` lists every key with
what removes it; docs/architecture.md has the table):

    _connection  opening a client (redis://, rediss://, unix://, redis+sentinel://)
    _keys        every key name, with its type and what removes it; partitions and tags
    _partitions  the deployment's partition count, recorded once and checked at start-up
    _scripts     the Lua scripts and the invariants each keeps
    _runs        run hashes, run indexes, idempotency keys, rate buckets, counters
    _attempts    leases, claims, requeues, checkpoints, fenced writes (RunWriter)
    _waits       parked runs: durable sleeps, input requests and inputs, wake-up timers
    _children    child runs: cancelling the children of runs that ended before them
    _schedules   cron schedules and when each ticks next
    _events      run event streams: ids, encoding, byte-bounded pages, live channels
    _queues      queue streams and consumer groups, the partitions' queue notices
    _presence    workers' presence and announced workflows
    _builds      current builds, move policies, routing (blue-green)
    _notices     cancel notices between replicas (pub/sub)
    _services    components' result cache and cluster-wide limits (the worker's)
    _sweep       what retention removes in the background (the janitor's)
    _loops       backoff, and which Redis errors pass by themselves
    _errors      domain errors the gRPC layer maps to statuses
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _keys as keys
from ._attempts import (
    Attempts,
    Claimed,
    ClaimRequest,
    Expired,
    RunWriter,
    TakeBack,
    WrongBuild,
    holder,
)
from ._builds import (
    POLICIES,
    WHEN_UNSERVED,
    Builds,
    BuildStats,
    BuildView,
    WorkflowBuilds,
    check_build_id,
    check_workflow_name,
)
from ._children import CancelledChild, Children
from ._connection import Redis, check_redis_url, connect, redis_time_ms
from ._errors import (
    AlreadyExistsError,
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    RateLimitedError,
    TooLargeError,
    UnauthenticatedError,
)
from ._events import (
    PAGE_BYTES,
    PAGE_EVENTS,
    EventFeed,
    EventPage,
    Events,
    OpenedStream,
    Published,
    StoredEvent,
    Subscribed,
    encode_event,
    event_id_key,
    parse_event_id,
)
from ._fanout import sharded
from ._loops import Backoff, transient
from ._notices import CancelNotice, Notices
from ._partitions import check_partitions
from ._presence import Presence, WorkflowPresence, presence_ms
from ._queues import QueueEntry, Queues
from ._runs import CancelOutcome, Created, Route, RunPage, RunRecord, Runs, Stats, TenantLimits
from ._schedules import ScheduleRecord, Schedules, Tick
from ._services import RedisServices
from ._sweep import Sweeper, SweepReport
from ._waits import InputOutcome, Waits

DEFAULT_PARTITIONS = keys.DEFAULT_PARTITIONS
MAX_PARTITIONS = keys.MAX_PARTITIONS
MAX_CHILDREN = keys.MAX_CHILDREN

__all__ = [
    "DEFAULT_PARTITIONS",
    "MAX_CHILDREN",
    "MAX_PARTITIONS",
    "PAGE_BYTES",
    "PAGE_EVENTS",
    "POLICIES",
    "WHEN_UNSERVED",
    "AlreadyExistsError",
    "Attempts",
    "Backoff",
    "BuildStats",
    "BuildView",
    "Builds",
    "CancelNotice",
    "CancelOutcome",
    "CancelledChild",
    "Children",
    "ClaimRequest",
    "Claimed",
    "Created",
    "DomainError",
    "EventFeed",
    "EventPage",
    "Events",
    "Expired",
    "FailedPreconditionError",
    "InputOutcome",
    "InvalidArgumentError",
    "NotFoundError",
    "Notices",
    "OpenedStream",
    "OutOfRangeError",
    "PermissionDeniedError",
    "Presence",
    "Published",
    "QueueEntry",
    "Queues",
    "RateLimitedError",
    "Redis",
    "RedisConnectionError",
    "RedisError",
    "RedisServices",
    "RedisTimeoutError",
    "ResponseError",
    "Route",
    "RunPage",
    "RunRecord",
    "RunWriter",
    "Runs",
    "ScheduleRecord",
    "Schedules",
    "Stats",
    "Store",
    "StoredEvent",
    "Subscribed",
    "SweepReport",
    "Sweeper",
    "TakeBack",
    "TenantLimits",
    "Tick",
    "TooLargeError",
    "UnauthenticatedError",
    "Waits",
    "WorkflowBuilds",
    "WorkflowPresence",
    "WrongBuild",
    "check_build_id",
    "check_partitions",
    "check_redis_url",
    "check_workflow_name",
    "connect",
    "encode_event",
    "event_id_key",
    "holder",
    "keys",
    "parse_event_id",
    "presence_ms",
    "redis_time_ms",
    "transient",
]


class Store:
    """Everything longline keeps in Redis, one part per kind of data.

    Built on one client (`redis`, pooled); the parts that hold a dedicated connection
    (`Queues`, `EventFeed`) are made by the control plane with their own. `partitions` is
    the deployment's partition count (see `_keys`); a process that makes runs or reads every
    partition checks it first (`check_partitions`).
    """

    def __init__(self, redis: aioredis.Redis, partitions: int = keys.DEFAULT_PARTITIONS) -> None:
        self.redis = redis
        self.partitions = keys.partition_numbers(partitions)
        self.presence = Presence(redis)
        self.runs = Runs(redis, self.presence, self.partitions)
        self.attempts = Attempts(redis, self.runs)
        self.waits = Waits(redis, self.runs)
        self.children = Children(redis, self.runs)
        self.schedules = Schedules(redis)
        self.events = Events(redis)
        self.builds = Builds(redis, self.presence, self.partitions)
        self.notices = Notices(redis)
        self.sweeper = Sweeper(redis, self.partitions)

    async def check_partitions(self) -> None:
        """Record the partition count on first start, or refuse another one (see
        `_partitions`)."""
        await check_partitions(self.redis, len(self.partitions))

    async def sharded_pubsub(self) -> bool:
        """Whether every Redis node has sharded pub/sub (Redis 7+), which the scripts then
        publish with (see `_fanout`); else they fall back to PUBLISH."""
        return await sharded(self.redis)

    async def now_ms(self) -> int:
        """Redis's clock in ms (every process measures leases by this one clock)."""
        return await redis_time_ms(self.redis)

    async def aclose(self) -> None:
        """Close the client and its pool."""
        await self.redis.aclose()
