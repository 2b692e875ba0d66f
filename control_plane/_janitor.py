"""The janitor: one round of the sweep (longline._store.Sweeper) every so often, by one
replica at a time, so that Redis holds what the retention policy says and nothing more."""

from __future__ import annotations

import asyncio
import logging

from longline._store import Backoff, RedisError, Store

log = logging.getLogger("longline.control_plane.janitor")


def sweep_interval(retention: float) -> float:
    """Seconds between rounds: often enough that index entries do not outlive their runs by
    much (half the retention), at most a minute, at least a second."""
    return min(60.0, max(1.0, retention / 2)) if retention > 0 else 60.0


class Janitor:
    """Runs the sweep every `interval` seconds; replicas take turns through a lock key."""

    def __init__(self, store: Store, replica_id: str, retention: float) -> None:
        self._store = store
        self._replica_id = replica_id
        self._retention_ms = int(retention * 1000)
        self.interval = sweep_interval(retention)
        self.rounds = 0  # rounds this replica ran
        self._cursors: dict[str, str] = {}  # index -> where its scan goes on next round

    async def run(self) -> None:
        """The janitor loop; runs until cancelled, whatever Redis answers."""
        backoff = Backoff(first=1.0, cap=self.interval)
        while True:
            try:
                await self._round()
            except RedisError as exc:
                await backoff.wait(log, "janitor", exc)
                continue
            except Exception as exc:  # a bug must not take the replica down with it
                log.exception("janitor: unexpected error; it goes on")
                await backoff.wait(log, "janitor", exc)
                continue
            backoff.reset()
            await asyncio.sleep(self.interval)

    async def _round(self) -> None:
        # One replica per interval: the lock lapses by itself if its holder dies mid-round.
        sweeper = self._store.sweeper
        if not await sweeper.take_turn(self._replica_id, int(self.interval * 1000)):
            return
        report = await sweeper.sweep(self._retention_ms, self._cursors)
        self.rounds += 1
        if report.anything:
            log.info(
                "swept: %d index entries of expired runs, %d acknowledged queue entries, "
                "%d idle consumers, %d empty queues and %d builds of the past",
                report.index_entries,
                report.queue_entries,
                report.consumers,
                report.queues,
                report.builds,
            )
