"""The event hub: one Redis connection per replica and Redis node (one in all on a single
Redis) serves every StreamRun call of that replica.

Every event is appended to its run's stream and, in the same script, published on a channel
named after that stream, with the event itself as the message (see _scripts.emit). The hub
subscribes to the channels of the runs its callers watch, one SUBSCRIBE per run however many
watch it, and fans each message out in process: the cost of a replica grows with the events
of the runs it serves, not with how many it watches, and its Redis connection count does not
grow with watchers.

Publish/subscribe is at most once, so the stream stays the source of truth: a subscriber
joins the fan-out, and once the subscription is confirmed reads the stream from its cursor,
then takes live messages; ids decide order, so it sees every event once with no gap.
(StreamRun subscribes before its first read, `subscribe`; a watcher that did not, or that
must re-read, catches up first, then subscribes and reads the gap once more.) If the hub's
connection drops, every subscriber re-reads from its cursor.

"Confirmed" means confirmed by the reply to that watch's own SUBSCRIBE. A channel can be
subscribed, unsubscribed (its last watcher left) and subscribed again before the first reply
arrives; replies on one connection come in command order (and a channel's go on one
connection, its node's, until the feed renews), so the hub keeps, per channel, the
watches whose SUBSCRIBE is unanswered, oldest first, and gives each reply to the oldest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from longline._events import TERMINAL_STATUSES
from longline._store import (
    Backoff,
    EventFeed,
    EventPage,
    NotFoundError,
    Published,
    RedisConnectionError,
    RedisError,
    Store,
    StoredEvent,
    event_id_key,
)

log = logging.getLogger("longline.control_plane.hub")

# What one slow subscriber may have buffered before it falls back to reading the stream: so
# many events, or so many bytes of their message and data (characters, as Python counts).
_QUEUE_LIMIT = 10_000
_QUEUE_BYTES = 1024 * 1024
# A watcher that hears nothing for this long checks that its run still exists (seconds).
LIVENESS = 30.0  # the longest a blocking read waits; readers' socket timeout is longer


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[StoredEvent | None] = field(default_factory=asyncio.Queue)
    queued_bytes: int = 0  # message and data of the events in the queue
    overflowed: bool = False  # events may have been missed: re-read from the stream

    def offer(self, event: StoredEvent) -> None:
        if self.overflowed:
            return
        size = _size(event)
        full = self.queue.qsize() >= _QUEUE_LIMIT or self.queued_bytes + size > _QUEUE_BYTES
        if full and not self.queue.empty():  # one event, however large, is always taken
            self.resync()  # it re-reads from Redis, so nothing is lost
            return
        self.queued_bytes += size
        self.queue.put_nowait(event)

    async def next(self) -> StoredEvent | None:
        """The next live event; None when it must re-read from the stream."""
        event = await self.queue.get()
        if event is not None:
            self.queued_bytes -= _size(event)
        return event

    def resync(self) -> None:
        self.overflowed = True
        self.queue.put_nowait(None)  # wakes it if it waits


def _size(event: StoredEvent) -> int:
    return len(event.message) + len(event.data_json)


@dataclass(eq=False)
class Subscription:
    """A run's live events, subscribed before a first read (EventHub.subscribe)."""

    run_id: str
    subscriber: _Subscriber


@dataclass(eq=False)
class _Watch:
    subscribed: asyncio.Future[None]  # done once Redis confirmed the subscription
    subscribers: set[_Subscriber] = field(default_factory=set)


class EventHub:
    """Serves run events from Redis to any number of local watchers over one connection per
    Redis node."""

    def __init__(self, store: Store, feed: EventFeed) -> None:
        self._store = store
        # On a dedicated connection, held by the subscription. Always subscribed to a channel
        # of its own, so the reader can block on the connection at once.
        self._feed = feed
        self._own_channel = feed.own_channel
        self._watches: dict[str, _Watch] = {}  # channel (the run's events key) -> watch
        # channel -> the watches whose SUBSCRIBE Redis has not confirmed yet, in sending order
        self._unconfirmed: dict[str, deque[_Watch]] = {}
        self._subscribing: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()
        self._ready_at = 0.0  # when the current connection's own subscription was confirmed
        self.on_delivery: Callable[[float], None] | None = None  # seconds from write to fan-out

    @property
    def watchers(self) -> int:
        """How many StreamRun calls this hub is serving."""
        return sum(len(w.subscribers) for w in self._watches.values())

    async def run(self) -> None:
        """The reader loop; runs until cancelled.

        Any Redis error (a lost connection, or a reply such as READONLY, LOADING, OOM, NOPERM)
        is logged once, every watcher re-reads from its cursor, and the hub subscribes again
        on a new connection after a wait that doubles from 0.1 s up to 5 s (_loops.Backoff).
        The waits start over once a connection has served for that long.
        """
        backoff = Backoff()
        try:
            while True:
                problem: Exception
                try:
                    await self._feed.open()
                    await self._read()
                    problem = RedisConnectionError("the subscription ended")  # nothing subscribed
                except (RedisError, OSError) as exc:
                    problem = exc
                except Exception as exc:  # a bug must not take the replica down with it
                    log.exception("event hub: unexpected error")
                    problem = exc
                if self._ready.is_set() and time.monotonic() - self._ready_at >= backoff.cap:
                    backoff.reset()  # that connection served well: this is a new fault
                self._lost_connection()
                await self._feed.renew()
                await backoff.wait(log, "event hub (watchers re-read from their cursors)", problem)
        finally:
            await self._feed.aclose()

    def _lost_connection(self) -> None:
        """Messages may have been lost: every subscriber re-reads from its cursor and
        subscribes again on the new connection."""
        self._ready.clear()
        self._unconfirmed.clear()
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            if not watch.subscribed.done():
                watch.subscribed.set_exception(RedisConnectionError("the event hub lost Redis"))
                watch.subscribed.exception()  # its waiters get it; nobody else needs to
            for subscriber in watch.subscribers:
                subscriber.resync()

    async def _read(self) -> None:
        async for message in self._feed.messages():
            channel = message.channel
            if not isinstance(message, Published):
                if channel == self._own_channel:
                    self._ready_at = time.monotonic()
                    self._ready.set()
                waiting = self._unconfirmed.get(channel)
                if waiting:
                    confirmed = waiting.popleft()  # it may have been left since: no matter
                    if not waiting:
                        del self._unconfirmed[channel]
                    if not confirmed.subscribed.done():
                        confirmed.subscribed.set_result(None)
            else:
                watch = self._watches.get(channel)
                if watch is None:
                    continue  # its last watcher left while the message was on its way
                event = message.event
                if event is None:
                    # Not written by the scripts; the stream holds the truth: re-read it.
                    log.warning(
                        "event hub: a message on %s is not an event (%s)", channel, message.problem
                    )
                    for subscriber in watch.subscribers:
                        subscriber.resync()
                    continue
                for subscriber in watch.subscribers:
                    subscriber.offer(event)
                if self.on_delivery is not None:
                    self.on_delivery(max(0.0, time.time() - event.time_ms / 1000))

    async def _watch(self, channel: str, subscriber: _Subscriber) -> _Watch:
        watch = self._watches.get(channel)
        if watch is None:
            watch = self._watches[channel] = _Watch(
                subscribed=asyncio.get_running_loop().create_future()
            )
            # Sent by a task of the hub's, not by this caller: a caller that leaves before
            # the hub is ready must not leave the others of this watch unsubscribed.
            task = asyncio.create_task(self._subscribe(channel, watch))
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)
        watch.subscribers.add(subscriber)
        await asyncio.shield(watch.subscribed)
        return watch

    async def _subscribe(self, channel: str, watch: _Watch) -> None:
        try:
            await self._ready.wait()
            if self._watches.get(channel) is not watch:
                return  # everyone left, or the connection was lost (its waiters were told)
            self._unconfirmed.setdefault(channel, deque()).append(watch)
            await self._feed.subscribe(channel)
        except (RedisError, OSError) as exc:
            # Nothing was sent (the feed could not reach the channel's node; it renews):
            # no confirmation will come for this watch.
            waiting = self._unconfirmed.get(channel)
            if waiting is not None and watch in waiting:
                waiting.remove(watch)
                if not waiting:
                    del self._unconfirmed[channel]
            if not watch.subscribed.done():
                watch.subscribed.set_exception(exc)
                watch.subscribed.exception()  # its waiters get it

    async def subscribe(self, run_id: str) -> Subscription:
        """Subscribe to the run's live events now (Redis confirmed it when this returns): a
        page read after this misses nothing. Hand it to `events` (which ends it), or `end`
        it."""
        subscriber = _Subscriber()
        channel = self._feed.channel(run_id)
        try:
            await self._watch(channel, subscriber)
        except BaseException:
            self._unwatch_soon(channel, subscriber)
            raise
        return Subscription(run_id, subscriber)

    async def end(self, subscription: Subscription) -> None:
        """Stop a subscription that was not handed to `events` (a no-op once it was)."""
        self._unwatch_soon(self._feed.channel(subscription.run_id), subscription.subscriber)

    def _unwatch_soon(self, channel: str, subscriber: _Subscriber) -> None:
        """_unwatch without waiting for Redis: a caller that was cancelled (a deadline over a
        Redis that does not answer) must not wait again. The UNSUBSCRIBE is sent by a task of
        the hub's, ahead of any SUBSCRIBE of the channel made after this (the feed sends them
        in the order they are asked for)."""
        watch = self._watches.get(channel)
        if watch is None or subscriber not in watch.subscribers:
            return
        watch.subscribers.discard(subscriber)
        if watch.subscribers:
            return
        del self._watches[channel]

        async def unsubscribe() -> None:
            with contextlib.suppress(RedisError, OSError, RuntimeError):  # a dead connection
                await self._feed.unsubscribe(channel)

        task = asyncio.create_task(unsubscribe())
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def events(
        self,
        run_id: str,
        after: str = "",
        first: EventPage | None = None,
        subscription: Subscription | None = None,
    ) -> AsyncGenerator[StoredEvent, None]:
        """The run's events after `after`, live, ending with the terminal event. `first` is
        the first page after `after`, when the caller read it already: after `subscription`
        (from `subscribe`) when it gives one, which this then ends. Catching up reads pages
        bounded in count and bytes (Events.read_page)."""
        cursor = after or "0-0"
        channel = self._feed.channel(run_id)
        ended = False
        subscriber = subscription.subscriber if subscription is not None else None
        while True:
            pending: EventPage | None = None
            if subscriber is None:
                # 1. Catch up from Redis.
                while True:
                    if first is not None:
                        page, first = first, None
                    else:
                        page = await self._store.events.read_page(run_id, cursor)
                    for event in page.events:
                        cursor = event.event_id
                        yield event
                        if event.terminal:
                            return
                    if not page.more:
                        break
                if ended:
                    return  # it ended, and its terminal event is not in the stream (lost)
            else:  # subscribed already, and `first` was read after that
                pending, first = first, None
            # 2. Subscribe, then read what was written before the subscription took effect.
            watched, subscriber = subscriber is not None, subscriber or _Subscriber()
            try:
                if not watched:
                    await self._watch(channel, subscriber)
                while True:
                    if pending is not None:
                        page, pending = pending, None
                    else:
                        page = await self._store.events.read_page(run_id, cursor)
                    for event in page.events:
                        cursor = event.event_id
                        yield event
                        if event.terminal:
                            return
                    if not page.more:
                        break
                # 3. Live events, in id order; anything at or before the cursor was seen.
                while not subscriber.overflowed:
                    try:
                        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation
                        # that comes as an event arrives, and the caller's (a StreamRun
                        # whose client left, a RunWorkflow at its deadline) would go on.
                        async with asyncio.timeout(LIVENESS):
                            live = await subscriber.next()
                    except TimeoutError:
                        # Quiet for a while: is there still a run to wait for? Its keys expire
                        # after its retention, and a Redis that restarted empty has none.
                        status = await self._store.runs.status(run_id)
                        if status is None:
                            raise NotFoundError(
                                f"run {run_id!r} no longer exists: its retention passed, or "
                                "Redis lost it",
                                "RUN_NOT_FOUND",
                            ) from None
                        if status in TERMINAL_STATUSES:
                            ended = True
                            subscriber.resync()  # read what is left from the stream
                        continue
                    if live is None or event_id_key(live.event_id) <= event_id_key(cursor):
                        continue
                    cursor = live.event_id
                    yield live
                    if live.terminal:
                        return
            finally:
                # Not waited for: the caller (a StreamRun ending) goes on at once.
                self._unwatch_soon(channel, subscriber)
                subscriber = None
