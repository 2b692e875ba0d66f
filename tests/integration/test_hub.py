"""The event hub on its own, against a real Redis: subscription order, Redis errors, bounds.

The hub's connection goes through a small TCP proxy whose two directions the tests can hold
and release, so orderings that depend on when Redis sees a command and when the hub reads a
reply are made to happen, not hoped for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis

from longline._store import (
    ClaimRequest,
    EventFeed,
    RedisConnectionError,
    RunWriter,
    Store,
    StoredEvent,
    connect,
    encode_event,
    keys,
)
from longline._store._fanout import sharded
from longline.control_plane._hub import _QUEUE_BYTES, EventHub
from tests.conftest import eventually

# Through a proxy in front of one server, or with ACLs set on it: the hub on a cluster is
# tested in test_partitions.
pytestmark = pytest.mark.single_redis


@dataclass
class _Gate:
    open: asyncio.Event = field(default_factory=asyncio.Event)
    held: bytearray = field(default_factory=bytearray)  # read, not yet passed on


class GatedProxy:
    """Forwards TCP to Redis; `up` (to Redis) and `down` (to the client) can be held."""

    def __init__(self, target_url: str) -> None:
        parsed = urlparse(target_url)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        self.up, self.down = _Gate(), _Gate()
        self.up.open.set()
        self.down.open.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, self.up)),
            asyncio.create_task(self._pump(up_reader, writer, self.down)),
        ):
            self._tasks.add(task)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: _Gate) -> None:
        try:
            while data := await src.read(65536):
                gate.held += data
                await gate.open.wait()
                dst.write(bytes(gate.held))
                gate.held.clear()
                await dst.drain()
        finally:
            dst.close()


@dataclass
class Hub:
    hub: EventHub
    store: Store
    proxy: GatedProxy


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[Hub]:
    proxy = GatedProxy(redis_url)
    await proxy.start()
    store = Store(connect(redis_url))
    reader = connect(proxy.url, socket_timeout=None, max_connections=1)
    event_hub = EventHub(store, EventFeed(reader, "hub-test"))
    task = asyncio.create_task(event_hub.run())
    await asyncio.wait_for(event_hub._ready.wait(), 10)
    yield Hub(event_hub, store, proxy)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await proxy.close()
    await reader.aclose()
    await store.redis.aclose()


async def _started_run(store: Store, run_id: str) -> RunWriter:
    """A RUNNING run (its one event: RUN_QUEUED) and the writer of its attempt."""
    await store.presence.announce("w1", [("flow", "")], 60_000)
    await store.runs.create(run_id, "flow", "null", {})
    assert await store.attempts.claim(
        ClaimRequest(run_id, 1, "w1", "cp", lease_ms=60_000, max_attempts=3)
    )
    return RunWriter(store, run_id, 1, "w1")


async def _numsub(redis: aioredis.Redis, channel: str) -> int:
    """Subscribers of `channel`: shard subscriptions on Redis 7+, plain ones before."""
    if await sharded(redis):
        return int(dict(await redis.pubsub_shardnumsub(channel))[channel])
    return int(dict(await redis.pubsub_numsub(channel))[channel])


async def _publish(redis: aioredis.Redis, channel: str, message: str) -> None:
    """Publish the way the scripts do (sharded on Redis 7+)."""
    if await sharded(redis):
        await redis.spublish(channel, message)
    else:
        await redis.publish(channel, message)


async def _subscribed(hub: EventHub, run_id: str, who: str = "the watcher") -> None:
    """Wait until Redis has confirmed the hub's subscription to the run's channel."""
    channel = keys.events_key(run_id)

    async def confirmed() -> bool:
        watch = hub._watches.get(channel)
        return watch is not None and watch.subscribed.done()

    await eventually(confirmed, what=f"{who} to be subscribed")


def _follow(hub: EventHub, run_id: str, into: list[StoredEvent]) -> asyncio.Task[None]:
    async def follow() -> None:
        async for event in hub.events(run_id):
            into.append(event)

    return asyncio.create_task(follow())


async def test_a_watch_is_confirmed_by_its_own_subscribe_not_an_earlier_one(
    hub: Hub, redis: aioredis.Redis
) -> None:
    """Subscribe, unsubscribe, subscribe of one channel in quick succession: the second watch
    must wait for the reply to its own SUBSCRIBE. Taking the first SUBSCRIBE's reply for it
    would let it read the gap from the stream before its subscription took effect, and miss
    what is written in between: the terminal event, so that the watcher hangs."""
    marker_run = await _started_run(hub.store, "r0")
    writer = await _started_run(hub.store, "r1")
    channel = keys.events_key("r1")

    # A watcher of another run, subscribed, whose events show how far the hub has read.
    marks: list[StoredEvent] = []
    w0 = _follow(hub.hub, "r0", marks)
    await _subscribed(hub.hub, "r0", "the marker watcher")

    # 1. A first watcher subscribes; Redis applies it, its confirmation is held back.
    hub.proxy.down.open.clear()
    first: list[StoredEvent] = []
    w1 = _follow(hub.hub, "r1", first)
    await eventually(lambda: _numsub(redis, channel), what="the first SUBSCRIBE to take effect")
    # 2. It leaves before the confirmation came: the hub unsubscribes.
    w1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w1

    async def unsubscribed() -> bool:
        return await _numsub(redis, channel) == 0

    await eventually(unsubscribed, what="the UNSUBSCRIBE to take effect")
    # 3. A second watcher comes; its SUBSCRIBE is held on the way to Redis.
    hub.proxy.up.open.clear()
    second: list[StoredEvent] = []
    w2 = _follow(hub.hub, "r1", second)
    await eventually(
        lambda: _true(b"SUBSCRIBE" in bytes(hub.proxy.up.held).upper() and len(second) == 1),
        what="the second watcher to catch up and send its SUBSCRIBE",
    )
    # 4. The hub reads the first SUBSCRIBE's confirmation and the UNSUBSCRIBE's; the marker
    # event published after them shows it has.
    await marker_run.append([encode_event("STATUS", 1, "marker")])
    hub.proxy.down.open.set()
    await eventually(
        lambda: _true(any(e.message == "marker" for e in marks)), what="the marker event"
    )
    assert not hub.hub._watches[channel].subscribed.done(), (
        "the second watch counts as subscribed although its SUBSCRIBE has not reached Redis"
    )
    # 5. The run ends while the second SUBSCRIBE is still on its way: the watcher must still
    # see the terminal event once its subscription is confirmed.
    await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    hub.proxy.up.open.set()
    await asyncio.wait_for(w2, 10)
    assert [e.type for e in second] == ["RUN_QUEUED", "RUN_SUCCEEDED"]
    w0.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w0


async def _true(value: bool) -> bool:
    return value


async def test_the_hub_outlives_any_redis_error_with_capped_backoff(
    redis_url: str, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply error (here NOPERM; READONLY, LOADING, OOM and UNBLOCKED are the same kind of
    error to redis-py) is survived like a lost connection: one log line per failure, waits
    that double from 0.1 s (with jitter), and the hub serves again once Redis does."""
    await redis.acl_setuser(
        "hub", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    parsed = urlparse(redis_url)
    store = Store(connect(redis_url))
    reader = connect(
        f"redis://hub:pw@{parsed.hostname}:{parsed.port}/0", socket_timeout=None, max_connections=1
    )
    hub = EventHub(store, EventFeed(reader, "hub-errors"))
    task = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub._ready.wait(), 10)
        # Every SUBSCRIBE of the hub's user is refused from now on.
        await redis.acl_setuser("hub", enabled=True, reset_channels=True)
        await redis.execute_command("CLIENT", "KILL", "USER", "hub")

        def failures() -> list[float]:
            return [
                r.created
                for r in caplog.records
                if r.name == "longline.control_plane.hub" and "NoPermissionError" in r.getMessage()
            ]

        async def four_failures() -> bool:
            assert not task.done(), f"the hub stopped: {task}"
            return len(failures()) >= 4

        await eventually(four_failures, what="four refused subscriptions")
        times = failures()
        # Waits of at least 0.1, 0.2, 0.4 s, less up to half for jitter.
        assert times[3] - times[0] >= (0.1 + 0.2 + 0.4) / 2, f"no backoff between retries: {times}"
        assert not task.done()

        # Redis lets it in again: the hub serves a watcher to the end.
        await redis.acl_setuser("hub", enabled=True, channels=["*"])
        writer = await _started_run(store, "r1")
        seen: list[StoredEvent] = []
        follower = _follow(hub, "r1", seen)
        await _subscribed(hub, "r1", "a watcher after the errors")
        await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
        await asyncio.wait_for(follower, 10)
        assert [e.type for e in seen] == ["RUN_QUEUED", "RUN_SUCCEEDED"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.aclose()
        await store.redis.aclose()


@pytest.mark.parametrize("garbage", ["no json here", "1-0 {}", '1-0 ["t"]', "x-y []", "1-0 [1, 2]"])
async def test_a_message_that_is_not_an_event_costs_a_re_read_not_the_hub(
    hub: Hub, redis: aioredis.Redis, garbage: str
) -> None:
    writer = await _started_run(hub.store, "r1")
    seen: list[StoredEvent] = []
    follower = _follow(hub.hub, "r1", seen)
    channel = keys.events_key("r1")
    await _subscribed(hub.hub, "r1")
    await _publish(redis, channel, garbage)
    await writer.append([encode_event("STATUS", 1, "after the garbage")])
    await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    await asyncio.wait_for(follower, 10)
    assert [e.type for e in seen] == ["RUN_QUEUED", "STATUS", "RUN_SUCCEEDED"]


def _buffered_bytes(hub: EventHub) -> int:
    return sum(
        len(e.message) + len(e.data_json)
        for watch in hub._watches.values()
        for subscriber in watch.subscribers
        for e in list(subscriber.queue._queue)  # type: ignore[attr-defined]
        if e is not None
    )


async def test_a_slow_watcher_buffers_a_bounded_number_of_bytes_and_misses_nothing(
    hub: Hub,
) -> None:
    writer = await _started_run(hub.store, "r1")
    delivered = 0

    def count(_: float) -> None:
        nonlocal delivered
        delivered += 1

    hub.hub.on_delivery = count
    events = hub.hub.events("r1")
    seen = [await events.__anext__()]  # RUN_QUEUED, from the stream
    waiting = asyncio.create_task(anext(events))
    await _subscribed(hub.hub, "r1")
    await writer.append([encode_event("STATUS", 1, "live")])
    seen.append(await asyncio.wait_for(waiting, 10))
    # The watcher stops reading; 40 events of 64 KiB come.
    chunk = "x" * 65536
    for n in range(40):
        await writer.append([encode_event("OUTPUT", 1, f"{n:02d}{chunk}")])
    await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    await eventually(lambda: _true(delivered == 42), what="the hub to fan out every event")
    buffered = _buffered_bytes(hub.hub)
    assert buffered <= _QUEUE_BYTES, f"{buffered} bytes buffered for one slow watcher"
    # It reads again: every event, once, in order (from the stream where the buffer ended).
    seen += [e async for e in events]
    assert [e.type for e in seen] == ["RUN_QUEUED", "STATUS", *["OUTPUT"] * 40, "RUN_SUCCEEDED"]
    assert [e.message[:2] for e in seen[2:-1]] == [f"{n:02d}" for n in range(40)]


async def test_a_closed_feed_opens_no_connection_for_a_late_watcher(redis_url: str) -> None:
    """At shutdown a StreamRun can end after the hub closed its feed: its unsubscription
    must not open a connection that nothing closes (found as a ResourceWarning later)."""
    reader = connect(redis_url, client_name="late-feed", socket_timeout=None)
    feed = EventFeed(reader, "cp-late")
    await feed.open()
    await feed.aclose()
    await reader.aclose()
    await feed.unsubscribe(feed.channel("r1"))
    with pytest.raises(RedisConnectionError):
        await feed.subscribe(feed.channel("r1"))
    probe = connect(redis_url)
    names = [c.get("name") for c in await probe.client_list()]
    await probe.aclose()
    assert "late-feed" not in names


async def test_a_watcher_cancelled_as_an_event_arrives_stops(hub: Hub) -> None:
    """The cancellation of a watcher (a StreamRun whose client left, a RunWorkflow at its
    deadline) that comes in the very step an event arrives is not lost: Python 3.11's
    asyncio.wait_for would return the event instead, and the watcher would go on."""
    await _started_run(hub.store, "r1")
    seen: list[StoredEvent] = []
    follower = _follow(hub.hub, "r1", seen)
    channel = keys.events_key("r1")
    await _subscribed(hub.hub, "r1")
    (subscriber,) = hub.hub._watches[channel].subscribers
    await eventually(
        lambda: _true(bool(subscriber.queue._getters)),  # type: ignore[attr-defined]
        what="the watcher to wait for a live event",
    )
    later = dataclasses.replace(seen[0], event_id="99999999999999-0")
    subscriber.offer(later)  # the event arrives ...
    follower.cancel()  # ... and the cancellation, in the same step
    done, _ = await asyncio.wait({follower}, timeout=5)
    assert follower in done and follower.cancelled(), f"the watcher went on: {seen}"
