"""Subscriptions held over one connection per Redis node that owns their channels.

Owns no key. The scripts publish a run's events and a partition's queue notices with
SPUBLISH where the server has it (Redis 7+, see `_scripts.publish`): a shard channel's
messages go only to the node that owns the channel's hash slot, instead of to every node of
a cluster as PUBLISH's do. A subscriber must therefore ask that node, with SSUBSCRIBE. A
`Fanout` keeps one subscribing connection per node its channels live on (one in all on a
single Redis or Sentinel), opened when its first channel there is subscribed.

Publisher and subscriber decide the same way, per node: a script asks the server that runs
it (`redis.REDIS_VERSION_NUM`, which Redis 7 added), and a Fanout runs that same test on
each node before it subscribes there. A server without sharded pub/sub (Redis 6.2) gets
PUBLISH and SUBSCRIBE (`sharded()` says which, for the start-up line).

Faults end in one way: `messages()` raises, the caller `renew()`s and subscribes again (and
re-reads what it may have missed: pub/sub is at most once). That covers a lost connection,
a MOVED reply to a subscription sent to a node that no longer owns the slot, and the
SUNSUBSCRIBE a Redis 7 node sends on its own when a channel's slot leaves it (resharding,
failover); `renew()` learns the cluster's slots again first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from ._connection import is_cluster, ready_to_subscribe

__all__ = ["Fanout", "Message", "Subscribed", "learn_slots", "sharded"]

# 1 where the server has SPUBLISH/SSUBSCRIBE: the test the scripts' publish() makes.
_PROBE = "if redis.REDIS_VERSION_NUM then return 1 end return 0"


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Redis confirmed a subscription to `channel` (replies on one node's connection come in
    the order its subscriptions were sent; a channel always goes to the same node until
    `renew()`)."""

    channel: str


@dataclass(frozen=True, slots=True)
class Message:
    """A message published on `channel`."""

    channel: str
    data: Any


async def sharded(redis: Any) -> bool:
    """Whether every node of `redis` (every master of a cluster) has sharded pub/sub."""
    if is_cluster(redis):
        await ready_to_subscribe(redis)
        answers = await asyncio.gather(
            *(
                redis.execute_command("EVAL", _PROBE, 0, target_nodes=node)
                for node in redis.get_primaries()
            )
        )
        return all(int(a) == 1 for a in answers)
    return int(await redis.eval(_PROBE, 0)) == 1


async def learn_slots(redis: Any) -> None:
    """Make a cluster client learn the cluster's slots again (after a failover, say): the
    Fanout's own connections never tell it of a MOVED or a dead node. Errors are left for
    the next subscription to meet."""
    if is_cluster(redis):
        # Not a RedisError: the cluster client's own (no node answers, slots not covered).
        with contextlib.suppress(RedisError, OSError, RedisClusterException):
            await redis.nodes_manager.initialize()


# What the connections' readers may have queued for the caller before a slow caller counts
# as a fault (it renews and re-reads, as after a lost connection): messages, and bytes of
# their data. A subscribing connection that is not read would otherwise grow without bound.
INBOX_MESSAGES = 10_000
INBOX_BYTES = 32 * 1024 * 1024


class _Inbox:
    """What every connection's reader hands the caller, in arrival order; bounded."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Subscribed | Message | BaseException] = asyncio.Queue()
        self._bytes = 0

    def put(self, item: Subscribed | Message) -> bool:
        """Queue it; False (and an error queued instead) when the caller fell behind."""
        size = (
            len(item.data)
            if isinstance(item, Message) and isinstance(item.data, str | bytes)
            else 0
        )
        if self._queue.qsize() >= INBOX_MESSAGES or self._bytes + size > INBOX_BYTES:
            self.fail(RedisConnectionError("the subscriber fell behind its messages"))
            return False
        self._bytes += size
        self._queue.put_nowait(item)
        return True

    def fail(self, exc: BaseException) -> None:
        self._queue.put_nowait(exc)

    async def get(self) -> Subscribed | Message | BaseException:
        item = await self._queue.get()
        if isinstance(item, Message) and isinstance(item.data, str | bytes):
            self._bytes -= len(item.data)
        return item


class _Node:
    """One node's subscribing connection, and the task that reads it into the inbox."""

    def __init__(self, name: str, client: aioredis.Redis, owned: bool, hold: str) -> None:
        self.name = name  # the node's "host:port" ("" on a single Redis)
        self.client = client
        self.owned = owned  # a connection of this Fanout's (a cluster node's): closed with it
        self.pubsub = client.pubsub()
        self.hold = hold
        self.sharded = False
        self.leaving: Counter[str] = Counter()  # unsubscriptions this side sent, unanswered
        self.reader: asyncio.Task[None] | None = None

    async def start(self, inbox: _Inbox) -> None:
        self.sharded = int(await self.client.eval(_PROBE, 0)) == 1
        # A plain channel nobody publishes on, through PubSub, which opens the connection:
        # its confirmation (Subscribed(hold)) says the connection is open.
        await self.pubsub.subscribe(self.hold)
        self.reader = asyncio.create_task(self._read(inbox))

    # The runs' channels are subscribed, and everything is read, on the connection itself,
    # not through redis-py's PubSub (which only opens it and holds `hold`): PubSub's command
    # and message path cost a control plane 10% of its CPU in B1 (a channel or two per
    # awaited run), and it keeps every channel in dicts of its own to subscribe again after
    # a reconnection, which a Fanout never wants (it renews instead). A connection that is
    # gone is a ConnectionError here too; none is opened again behind the caller's back.

    async def subscribe(self, channel: str) -> None:
        await self._send("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", channel)

    async def unsubscribe(self, channel: str) -> None:
        if getattr(self.pubsub, "connection", None) is None:
            return  # no connection: nothing to stop, and none is opened for it
        self.leaving[channel] += 1
        await self._send("SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE", channel)

    async def _send(self, *command: str) -> None:
        conn = self.pubsub.connection
        if conn is None or not conn.is_connected:
            raise RedisConnectionError("the subscribing connection is closed")
        await conn.send_command(*command, check_health=False)

    async def _read(self, inbox: _Inbox) -> None:
        try:
            conn = self.pubsub.connection
            while True:
                # math.inf: no read timeout, whatever the client's (redis-py's PubSub's own)
                reply = await conn.read_response(
                    timeout=math.inf, disconnect_on_error=False, push_request=True
                )
                if not isinstance(reply, list) or len(reply) < 3:
                    raise RedisConnectionError(f"not a pub/sub message: {reply!r:.100}")
                kind, channel = reply[0], reply[1]
                if kind in ("message", "smessage"):
                    if not inbox.put(Message(channel, reply[2])):
                        return  # the caller fell behind: it renews
                elif kind in ("subscribe", "ssubscribe"):
                    if not inbox.put(Subscribed(channel)):
                        return
                elif kind in ("unsubscribe", "sunsubscribe"):
                    if self.leaving[channel] > 0:
                        self.leaving[channel] -= 1
                        if not self.leaving[channel]:
                            del self.leaving[channel]
                    else:  # the node let it go: its slot moved
                        raise RedisConnectionError(
                            f"Redis ended the subscription to {channel} (its slot moved)"
                        )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the inbox
            inbox.fail(exc)

    def stop_reading(self) -> None:
        if self.reader is not None:
            self.reader.cancel()

    async def aclose(self) -> None:
        """Stop the reader and close the connection, also when the caller is cancelled
        meanwhile (its cancellation then stands)."""
        self.stop_reading()
        try:
            if self.reader is not None:
                await asyncio.wait({self.reader})
        finally:
            with contextlib.suppress(RedisError, OSError, RuntimeError):  # a dead connection
                await self.pubsub.aclose()
            if self.owned:
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await self.client.aclose()


class Fanout:
    """Subscriptions over `redis` (a client kept for subscriptions: no read timeout), one
    connection per node. `hold` names a plain channel nobody publishes on, which every
    connection holds; its confirmation on the first connection (Subscribed(hold)) says the
    Fanout is open."""

    def __init__(self, redis: aioredis.Redis, hold: str) -> None:
        self._redis = redis
        self.hold = hold
        self._nodes: dict[str, _Node] = {}
        self._node_of: dict[str, _Node] = {}  # channel -> the connection it was sent on
        self._inbox = _Inbox()
        self._closed = False
        self._home_confirmed = False  # the first hold confirmation was yielded
        # Per node: subscriptions and unsubscriptions are sent in the order they were asked
        # for, even when one waits for the node's connection (a caller matches a channel's
        # confirmations to its requests by that order). A node slow to connect holds up
        # only its own channels.
        self._order: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        """Open the first connection (the hold channel's node): Subscribed(hold) follows."""
        if self._closed:
            raise RedisConnectionError("the subscriptions are closed")
        await ready_to_subscribe(self._redis)
        name = self._name(self.hold)
        async with self._order.setdefault(name, asyncio.Lock()):
            await self._node(name)

    async def subscribe(self, channel: str) -> None:
        """Subscribe to `channel` on the node that owns it (a Subscribed confirms it)."""
        if self._closed:  # late at shutdown: no connection is opened for it
            raise RedisConnectionError("the subscriptions are closed")
        inbox = self._inbox
        try:
            name = self._name(channel)
            async with self._order.setdefault(name, asyncio.Lock()):
                if inbox is not self._inbox:  # renewed while it waited: the caller starts over
                    raise RedisConnectionError("the subscriptions were renewed")
                node = await self._node(name)
                self._node_of[channel] = node
                await node.subscribe(channel)
        except (RedisError, OSError) as exc:
            # A node that cannot be reached (a failover under way, a slot map gone stale):
            # messages() raises it too, so that the caller renews, and the slots are learnt
            # again, instead of every later subscription meeting the same dead address.
            if not self._closed and inbox is self._inbox:
                inbox.fail(exc)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving `channel`. Without its connection (closed, or renewed) there is
        nothing to stop, and none is opened for it."""
        if self._closed:
            return
        node = self._node_of.get(channel)
        if node is not None:
            name = node.name  # where it was sent, whatever the slots say now
        else:  # its subscription may be waiting for its node: this goes after it
            try:
                name = self._name(channel)
            except RedisConnectionError:
                return  # no node serves it now: the feed renews, which drops it
        async with self._order.setdefault(name, asyncio.Lock()):
            node = self._node_of.pop(channel, None)
            if node is not None and node in self._nodes.values():
                await node.unsubscribe(channel)

    async def messages(self) -> AsyncIterator[Subscribed | Message]:
        """What arrives on every connection, until one of them fails (then this raises:
        renew() and subscribe again)."""
        inbox = self._inbox
        while True:
            item = await inbox.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Subscribed) and item.channel == self.hold:
                if self._home_confirmed:
                    continue  # another node's connection: not news to the caller
                self._home_confirmed = True
            yield item

    async def renew(self) -> None:
        """Drop every connection and subscription and start over (on a cluster, after
        learning its slots again: a failure may have been a slot that moved)."""
        await self._close_nodes()
        self._inbox = _Inbox()
        await learn_slots(self._redis)

    async def aclose(self) -> None:
        """Close every connection (errors of dead ones are ignored); later subscriptions are
        refused and unsubscriptions do nothing."""
        self._closed = True
        await self._close_nodes()

    @property
    def connections(self) -> int:
        """How many subscribing connections are open."""
        return len(self._nodes)

    def _name(self, channel: str) -> str:
        if not is_cluster(self._redis):
            return ""
        try:
            node = self._redis.get_node_from_key(channel)
        except RedisClusterException as exc:  # a slot not covered now (a failover under way)
            raise RedisConnectionError(f"no node of the cluster serves {channel}: {exc}") from exc
        if node is None:
            raise RedisConnectionError(f"no node of the cluster serves {channel}")
        return str(node.name)

    async def _node(self, name: str) -> _Node:
        """The connection to node `name`, opened if there is none (under its _order)."""
        node = self._nodes.get(name)
        if node is None:
            node = await self._connect(name)
        return node

    async def _connect(self, name: str) -> _Node:
        inbox = self._inbox
        if name:
            cluster_node = self._redis.get_node(node_name=name)
            if cluster_node is None:  # left the cluster since the slots were learnt
                raise RedisConnectionError(f"node {name} is no longer in the cluster")
            pool = aioredis.ConnectionPool(
                connection_class=cluster_node.connection_class,
                max_connections=2,  # the probe, then the subscription
                **cluster_node.connection_kwargs,
            )
            node = _Node(name, aioredis.Redis.from_pool(pool), owned=True, hold=self.hold)
        else:
            node = _Node(name, self._redis, owned=False, hold=self.hold)
        try:
            await node.start(inbox)
        except BaseException:
            await node.aclose()
            raise
        if self._closed or inbox is not self._inbox:  # closed or renewed meanwhile
            await node.aclose()
            raise RedisConnectionError("the subscriptions were renewed")
        self._nodes[name] = node
        return node

    async def _close_nodes(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        self._node_of.clear()
        self._home_confirmed = False
        for node in nodes:
            node.stop_reading()  # none reads on while the others close
        cancelled: asyncio.CancelledError | None = None
        for node in nodes:  # each is closed, even when the caller is cancelled meanwhile
            try:
                await node.aclose()
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled
