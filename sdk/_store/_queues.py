"""The run queues as a control-plane replica's dispatcher reads them, and its wake stream.

Owns `keys.queue_key(workflow[, build])`: streams, one entry per queued attempt, added by
CREATE_RUN and the requeue scripts and read through the consumer group `keys.DISPATCH_GROUP`
that every replica shares, so each entry is delivered to one replica; acknowledged entries
are trimmed by the sweep. A build's own queue starts with `keys.PINNED_QUEUE_PREFIX`. Owns
too `keys.wake_key(replica + ":dispatch")`, a replica's wake stream: a freed slot or a new
worker wakes its blocking read; it expires WAKE_TTL after its replica stopped pushing it
back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import _keys as keys
from ._builds import queue_workflow

__all__ = ["WAKE_TTL", "QueueEntry", "Queues"]

WAKE_TTL = 3600  # seconds a wake stream outlives the last push of its expiry


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A queue entry a replica was handed: an attempt of a run to assign."""

    stream: str
    workflow: str
    run_id: str
    attempt: int
    entry_id: str

    @classmethod
    def of(cls, stream: str, entry_id: str, fields: Mapping[str, str]) -> QueueEntry:
        """From a stream entry (its fields as the scripts write them)."""
        return cls(
            stream, queue_workflow(stream)[0], fields["run_id"], int(fields["attempt"]), entry_id
        )


class Queues:
    """One replica's reads of the queues (`consumer` names it in the group), over `reader`,
    a dedicated connection that blocks in XREADGROUP, and its other commands over `redis`."""

    def __init__(self, redis: aioredis.Redis, reader: aioredis.Redis, consumer: str) -> None:
        self._redis = redis
        self._reader = reader
        self._consumer = consumer
        self.wake_key = keys.wake_key(consumer + ":dispatch")

    async def wake(self) -> None:
        """Wake this replica's blocking read."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=16, approximate=True)
            pipe.expire(self.wake_key, WAKE_TTL)
            await pipe.execute()

    async def ensure_group(self, stream: str) -> None:
        """Make the stream and its consumer group when either is missing."""
        try:
            await self._redis.xgroup_create(stream, keys.DISPATCH_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if stream == self.wake_key:
            await self._redis.expire(stream, WAKE_TTL)

    async def keep_wake(self) -> bool:
        """Push the wake stream's expiry back; False when it was gone (make it again)."""
        return bool(await self._redis.expire(self.wake_key, WAKE_TTL))

    async def read(
        self, streams: Mapping[str, str], count: int | None, block_ms: int | None
    ) -> list[QueueEntry]:
        """Entries of `streams` (stream -> '>' for new entries, '0' for this replica's
        pending ones), blocking up to block_ms (None: not at all). Wake entries and entries
        trimmed away while pending (nothing left to assign) are acknowledged here."""
        reply = await self._reader.xreadgroup(
            keys.DISPATCH_GROUP, self._consumer, dict(streams), count=count, block=block_ms
        )
        found: list[QueueEntry] = []
        done: dict[str, list[str]] = {}  # acknowledged in one round trip
        for stream, entries in reply or []:
            for entry_id, fields in entries or []:
                if fields and stream != self.wake_key:
                    found.append(QueueEntry.of(stream, entry_id, fields))
                else:
                    done.setdefault(stream, []).append(entry_id)
        await self.ack(done)
        return found

    async def reclaim(self, stream: str, idle_ms: int, count: int = 100) -> list[QueueEntry]:
        """Entries other replicas were handed and left idle for idle_ms (they died), now
        this replica's."""
        reply = await self._redis.xautoclaim(
            stream, keys.DISPATCH_GROUP, self._consumer, idle_ms, "0-0", count=count
        )
        return [
            QueueEntry.of(stream, entry_id, fields)
            for entry_id, fields in (reply[1] if len(reply) > 1 else [])
            if fields
        ]

    async def hand_back(self, entries: Sequence[QueueEntry]) -> list[bool]:
        """Queue each entry again as a new one, for every replica; True where that landed
        (the old entry may then be acknowledged)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for e in entries:
                pipe.xadd(e.stream, {"run_id": e.run_id, "attempt": str(e.attempt)})
            added = await pipe.execute(raise_on_error=False)
        return [not isinstance(reply, Exception) for reply in added]

    async def ack(self, done: Mapping[str, Sequence[str]]) -> None:
        """Acknowledge handled entries: stream -> entry ids."""
        if not done:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, entry_ids in done.items():
                pipe.xack(stream, keys.DISPATCH_GROUP, *entry_ids)
            await pipe.execute()
