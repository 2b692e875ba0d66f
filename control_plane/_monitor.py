"""The lease monitor: requeues (or fails) runs whose worker stopped renewing its lease, wakes
parked runs whose timer is due (a sleep's end, an input's timeout, a child run that ended),
and cancels the child runs of runs that ended before them.

Every replica runs one. Leases and timers sit in sorted sets scored by when they are due,
so the monitor sleeps until the earliest one; EXPIRE_LEASE and WAKE_RUN re-check the run
atomically, so when several replicas race on one expiry or timer exactly one acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from longline._store import Backoff, CancelNotice, RedisError, Store

log = logging.getLogger("longline.control_plane.monitor")


async def cancel_children(store: Store, run_ids: list[str] | None = None) -> int:
    """Cancel the children of runs that ended before them (of `run_ids`, or of any run the
    store noted), telling the workers of those running; how many it cancelled."""
    cancelled = await store.children.cancel_orphans(run_ids)
    for child in cancelled:
        if child.outcome.previous == "RUNNING" and child.outcome.worker_id:
            await store.notices.cancel(
                CancelNotice(
                    child.run_id, child.outcome.attempt, child.outcome.worker_id, child.reason
                )
            )
    return len(cancelled)


class LeaseMonitor:
    """Expires leases not renewed within `lease_timeout` seconds."""

    def __init__(
        self, store: Store, lease_timeout: float, on_expired: Callable[[], None] | None = None
    ) -> None:
        self._store = store
        self._on_expired = on_expired
        self._lease_timeout = lease_timeout
        self.expired = 0  # attempts this replica found lost (requeued or failed)
        self.woken = 0  # parked runs this replica woke
        # After losing Redis, give workers one lease timeout to renew before judging them:
        # their heartbeats could not land either.
        self._judge_after = 0.0

    async def run(self) -> None:
        """The monitor loop; runs until cancelled."""
        longest_nap = max(0.05, min(1.0, self._lease_timeout / 4))
        leases_backoff, timers_backoff = Backoff(), Backoff()
        orphans_next = 0.0  # time.monotonic() of the next look at orphaned children
        orphans_delay = 1.0  # doubled (to 30 s) while looking fails
        while True:
            try:
                if time.monotonic() >= self._judge_after:
                    for expired in await self._store.attempts.expire_leases(self._lease_timeout):
                        self.expired += 1
                        if self._on_expired is not None:
                            self._on_expired()
                        log.warning("run %s lost its worker: %s", expired.run_id, expired.outcome)
                leases = await self._store.attempts.next_lease_expiry_ms()
            except RedisError as exc:
                self._judge_after = time.monotonic() + self._lease_timeout
                await leases_backoff.wait(log, "lease monitor", exc)
                continue
            leases_backoff.reset()
            # Timers apart: a failure here must not hold back judging leases. A due timer is
            # due whatever the workers did; a full batch means more are due: go on at once.
            timers = None
            try:
                while True:
                    woken = await self._store.waits.wake_due()
                    self.woken += len(woken)
                    if len(woken) < 500:
                        break
                timers = await self._store.waits.next_wake_ms()
                timers_backoff.reset()
            except RedisError as exc:
                await timers_backoff.wait(log, "timers", exc)
            # Children whose parent ended before them (it succeeded, failed or was cancelled
            # elsewhere) are cancelled, by policy (see _store._children).
            if time.monotonic() >= orphans_next:  # at most once a second: a read per partition
                try:
                    done = await cancel_children(self._store)  # a bounded batch
                    orphans_delay = 1.0
                    orphans_next = time.monotonic() + (0.0 if done >= 200 else 1.0)
                except RedisError as exc:  # not slept here: leases and timers go on meanwhile
                    log.warning(
                        "child runs: %s: %s; looking again in %.0f s",
                        type(exc).__name__,
                        exc,
                        orphans_delay,
                    )
                    orphans_next = time.monotonic() + orphans_delay
                    orphans_delay = min(orphans_delay * 2, 30.0)
            try:
                now_ms = await self._store.now_ms()
            except RedisError as exc:
                await leases_backoff.wait(log, "lease monitor", exc)
                continue
            due = min((t for t in (leases, timers) if t is not None), default=None)
            # Leases only ever move later, so the earliest one bounds the next expiry; new
            # leases start a whole lease timeout from now, later than the nap. A timer set
            # meanwhile is seen at the next round, within the longest nap.
            nap = longest_nap if due is None else (due - now_ms) / 1000 + 0.005
            await asyncio.sleep(min(max(nap, 0.005), longest_nap))
