"""The run queues as a control-plane replica's dispatcher reads them, and their notices.

Owns `keys.queue_key(n, workflow[, build])`: streams, one per partition, workflow and build,
one entry per queued attempt, added by CREATE_RUN and the requeue scripts and read through
the consumer group `keys.DISPATCH_GROUP` that every replica shares, so each entry is
delivered to one replica; acknowledged entries are trimmed by the sweep. Owns too
`keys.work_channel(n)`, each partition's notices: whatever queues an attempt publishes the
queue's key there, so a replica reads a queue when it has something, without a blocking read
per queue (a notice lost with a connection is made up for by reading every queue again).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from . import _keys as keys
from ._connection import scripts_together
from ._fanout import Fanout, Subscribed, learn_slots
from ._scripts import NOTIFY

__all__ = ["QueueEntry", "Queues"]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A queue entry a replica was handed: an attempt of a run to assign."""

    stream: str
    workflow: str
    build: str  # the queue's build ('' for the workflow's own queue)
    run_id: str
    attempt: int
    entry_id: str

    @classmethod
    def of(cls, stream: str, entry_id: str, fields: Mapping[str, str]) -> QueueEntry:
        """From a stream entry (its fields as the scripts write them)."""
        workflow, build = keys.queue_of(stream)
        return cls(stream, workflow, build, fields["run_id"], int(fields["attempt"]), entry_id)


class Queues:
    """One replica's reads of the queues (`consumer` names it in the group) over `redis`,
    and its subscription to every partition's notices over `reader`, a connection of its
    own."""

    def __init__(
        self,
        redis: aioredis.Redis,
        reader: aioredis.Redis,
        consumer: str,
        partitions: tuple[int, ...],
    ) -> None:
        self._redis = redis
        self._reader = reader
        self._consumer = consumer
        self.partitions = partitions
        self._fanout: Fanout | None = None
        self._noticed = False  # notices() was called before
        self._notify = redis.register_script(NOTIFY)
        self._streams: dict[tuple[str, str], list[str]] = {}

    def streams(self, workflow: str, build: str) -> list[str]:
        """A queue's streams, one per partition (made once per queue: the dispatcher asks
        every round). Do not change the list returned."""
        made = self._streams.get((workflow, build))
        if made is None:
            if len(self._streams) >= 4096:  # workflows and builds of the past: start over
                self._streams.clear()
            made = self._streams[workflow, build] = [
                keys.queue_key(n, workflow, build) for n in self.partitions
            ]
        return made

    async def ensure_groups(self, streams: Sequence[str]) -> None:
        """Make each stream and its consumer group where either is missing."""
        if not streams:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xgroup_create(stream, keys.DISPATCH_GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, ResponseError) and "BUSYGROUP" in str(reply):
                continue
            if isinstance(reply, Exception):
                raise reply

    async def read(self, streams: Mapping[str, tuple[str, int | None]]) -> list[QueueEntry]:
        """Entries of `streams` (stream -> ('>' for new entries or '0' for this replica's
        pending ones, at most how many; None: all)), without blocking, in one round trip.
        Entries trimmed away while pending (nothing left to assign) are acknowledged here."""
        if not streams:
            return []
        order = sorted(streams)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in order:
                start, count = streams[stream]
                pipe.xreadgroup(keys.DISPATCH_GROUP, self._consumer, {stream: start}, count=count)
            replies = await pipe.execute()
        found: list[QueueEntry] = []
        done: dict[str, list[str]] = {}  # acknowledged in one round trip
        for reply in replies:
            for stream, entries in reply or []:
                for entry_id, fields in entries or []:
                    if fields:
                        found.append(QueueEntry.of(stream, entry_id, fields))
                    else:
                        done.setdefault(stream, []).append(entry_id)
        await self.ack(done)
        return found

    async def reclaim(
        self, streams: Sequence[str], idle_ms: int, count: int = 100
    ) -> list[QueueEntry]:
        """Entries other replicas were handed and left idle for idle_ms (they died), now
        this replica's, in one round trip."""
        if not streams:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xautoclaim(
                    stream, keys.DISPATCH_GROUP, self._consumer, idle_ms, "0-0", count=count
                )
            replies = await pipe.execute()
        return [
            QueueEntry.of(stream, entry_id, fields)
            for stream, reply in zip(streams, replies, strict=True)
            for entry_id, fields in (reply[1] if len(reply) > 1 else [])
            if fields
        ]

    async def hand_back(self, entries: Sequence[QueueEntry]) -> list[bool]:
        """Queue each entry again as a new one, for every replica (with its notice); True
        where that landed (the old entry may then be acknowledged)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for e in entries:
                pipe.xadd(e.stream, {"run_id": e.run_id, "attempt": str(e.attempt)})
            added = await pipe.execute(raise_on_error=False)
        landed = [not isinstance(reply, Exception) for reply in added]
        streams = {e.stream for e, ok in zip(entries, landed, strict=True) if ok}
        # A lost notice is made up for at the next full round: the entries landed.
        with contextlib.suppress(RedisError):
            await scripts_together(
                self._redis,
                [
                    (self._notify, [keys.work_channel(keys.partition_of_key(s))], [s])
                    for s in streams
                ],
                raise_on_error=False,
            )
        return landed

    async def ack(self, done: Mapping[str, Sequence[str]]) -> None:
        """Acknowledge handled entries: stream -> entry ids."""
        if not done:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, entry_ids in done.items():
                pipe.xack(stream, keys.DISPATCH_GROUP, *entry_ids)
            await pipe.execute()

    async def notices(self) -> AsyncIterator[str | None]:
        """Subscribe to every partition's notices, then yield None once subscribed (read
        every queue: notices sent before were not seen) and a queue's key per notice, until
        a connection is lost (an error: call again, on new connections). One connection per
        Redis node the partitions live on (see `_fanout`)."""
        await self.close_notices()
        if self._noticed:  # called again after a fault: the slots may have moved
            await learn_slots(self._reader)
        self._noticed = True
        fanout = self._fanout = Fanout(self._reader, keys.hub_channel(self._consumer))
        try:
            await fanout.open()
            channels = {keys.work_channel(n) for n in self.partitions}
            for channel in channels:
                await fanout.subscribe(channel)
            waiting = set(channels)
            async for message in fanout.messages():
                if isinstance(message, Subscribed):
                    if message.channel in waiting:
                        waiting.discard(message.channel)
                        if not waiting:
                            yield None
                elif isinstance(message.data, str):
                    yield message.data
        finally:  # its connections end with it, however it ends
            await fanout.aclose()
            if self._fanout is fanout:
                self._fanout = None

    async def close_notices(self) -> None:
        """Drop the subscriptions (errors of a dead connection are ignored)."""
        fanout, self._fanout = self._fanout, None
        if fanout is not None:
            await fanout.aclose()
