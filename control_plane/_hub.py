"""The event hub: one Redis reader per replica serves every StreamRun call of that replica.

Each watched run is read by one `XREAD BLOCK` over all watched keys at once,
fanned out in process. When a run is added to the watch set the reader is woken
by an entry in the replica's own wake stream, which is one of the keys it
blocks on, so no wake-up is ever lost and nothing polls.

A subscriber first catches up with XRANGE from its cursor, then joins the live
fan-out; ids decide order, so it sees every event once with no gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from longline._store import Store, StoredEvent, event_id_key, keys

log = logging.getLogger("longline.control_plane.hub")

_PAGE = 500
_QUEUE_LIMIT = 10_000  # events buffered for one slow subscriber before it falls back to XRANGE
BLOCK_MS = 10_000  # the longest a blocking read waits; readers' socket timeout is longer


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[StoredEvent] = field(default_factory=asyncio.Queue)
    overflowed: bool = False

    def offer(self, event: StoredEvent) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= _QUEUE_LIMIT:
            self.overflowed = True  # it re-reads from Redis, so nothing is lost
            return
        self.queue.put_nowait(event)


@dataclass(eq=False)
class _Watch:
    cursor: str  # every event up to here has been fanned out
    subscribers: set[_Subscriber] = field(default_factory=set)


class EventHub:
    """Serves run events from Redis to any number of local watchers over one reader."""

    def __init__(self, store: Store, reader: aioredis.Redis, replica_id: str) -> None:
        self._store = store
        self._reader = reader  # a dedicated connection: it spends its life blocked in XREAD
        self._wake_key = keys.wake_key(replica_id + ":hub")
        self._wake_cursor = "0-0"
        self._watches: dict[str, _Watch] = {}
        self.on_delivery: Callable[[float], None] | None = None  # seconds from write to fan-out

    @property
    def watchers(self) -> int:
        """How many StreamRun calls this hub is serving."""
        return sum(len(w.subscribers) for w in self._watches.values())

    async def wake(self) -> None:
        """Make the reader re-read its watch set now."""
        async with self._store.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=True)
            pipe.expire(self._wake_key, 3600)
            await pipe.execute()

    async def run(self) -> None:
        """The reader loop; runs until cancelled."""
        ids = await self._store.redis.xrevrange(self._wake_key, count=1)
        self._wake_cursor = ids[0][0] if ids else "0-0"
        while True:
            streams = {self._wake_key: self._wake_cursor}
            for run_id, watch in self._watches.items():
                streams[keys.events_key(run_id)] = watch.cursor
            try:
                reply = await self._reader.xread(streams, count=_PAGE, block=BLOCK_MS)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("event reader lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
                continue
            for stream, entries in reply or []:
                if stream == self._wake_key:
                    self._wake_cursor = entries[-1][0]
                    continue
                run_id = stream.split("{", 1)[1].split("}", 1)[0]
                watched = self._watches.get(run_id)
                if watched is None:
                    continue  # its last watcher left while the read was in flight
                now_ms = time.time() * 1000
                for event_id, fields in entries:
                    event = StoredEvent.decode(event_id, fields)
                    for subscriber in watched.subscribers:
                        subscriber.offer(event)
                    if self.on_delivery is not None:
                        self.on_delivery(max(0.0, (now_ms - event.time_ms) / 1000))
                watched.cursor = entries[-1][0]

    async def events(self, run_id: str, after: str = "") -> AsyncIterator[StoredEvent]:
        """The run's events after `after`, live, ending with the terminal event."""
        cursor = after or "0-0"
        while True:
            # 1. Catch up from Redis.
            while True:
                batch = await self._store.read_events(run_id, cursor, _PAGE)
                for event in batch:
                    cursor = event.event_id
                    yield event
                    if event.terminal:
                        return
                if len(batch) < _PAGE:
                    break
            # 2. Join the live fan-out, filling any gap up to where the hub already is.
            subscriber = _Subscriber()
            watch = self._watches.get(run_id)
            if watch is None:
                watch = self._watches[run_id] = _Watch(cursor=cursor)
                watch.subscribers.add(subscriber)
                await self.wake()
            else:
                watch.subscribers.add(subscriber)
            try:
                hub_at = watch.cursor
                while event_id_key(cursor) < event_id_key(hub_at):
                    batch = await self._store.read_events(run_id, cursor, _PAGE)
                    batch = [e for e in batch if event_id_key(e.event_id) <= event_id_key(hub_at)]
                    if not batch:
                        break
                    for event in batch:
                        cursor = event.event_id
                        yield event
                        if event.terminal:
                            return
                # 3. Live events, in id order; anything at or before the cursor was seen.
                while not (subscriber.overflowed and subscriber.queue.empty()):
                    event = await subscriber.queue.get()
                    if event_id_key(event.event_id) <= event_id_key(cursor):
                        continue
                    cursor = event.event_id
                    yield event
                    if event.terminal:
                        return
            finally:
                watch.subscribers.discard(subscriber)
                if not watch.subscribers and self._watches.get(run_id) is watch:
                    del self._watches[run_id]
