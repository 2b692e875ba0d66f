"""Child runs: the children a run that ended leaves behind, and waking parents.

Owns `keys.children_key(run_id)` (a set per run: its children, but detached ones, that have
not ended; it expires with the run) and `keys.orphans_key(n)` (a zset per partition: runs
that ended while children of theirs had not). START_CHILD (a parent's fenced write, sent
through `RunWriter.start_child`) creates a child in its parent's partition, so a parent and
its children share one slot; the scripts that end a run (`ended` in `_scripts`) record the
child's end in its parent, wake a parent that waits for it, and note the orphans.

The policy: when a run ends (succeeded, failed or cancelled) before children of its own, its
children that have not ended and were not started detached are cancelled, each with a
RUN_CANCELLED saying which parent ended how. The control plane does this (`cancel_orphans`)
at once when it cancels a run, and for every other ending in its monitor's next round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from .._events import TERMINAL_STATUSES
from . import _keys as keys
from . import _scripts
from ._errors import FailedPreconditionError, NotFoundError
from ._runs import CancelOutcome, Runs

__all__ = ["CancelledChild", "Children"]

log = logging.getLogger("longline.store")

_BATCH = 100  # children of one orphaned run cancelled per round


@dataclass(frozen=True, slots=True)
class CancelledChild:
    """A child run cancelled because its parent ended: what CANCEL_RUN did, for the notice
    to its worker."""

    run_id: str
    parent_run_id: str
    reason: str
    outcome: CancelOutcome


class Children:
    """What runs that ended leave to do for their children (the control plane's)."""

    def __init__(self, redis: aioredis.Redis, runs: Runs) -> None:
        self._redis = redis
        self._runs = runs
        self._clear = redis.register_script(_scripts.CLEAR_ORPHAN)

    async def cancel_orphans(
        self, run_ids: list[str] | None = None, budget: int = 200
    ) -> list[CancelledChild]:
        """Cancel the children of runs that ended before them: of `run_ids`, or of the
        orphans of every partition; at most `budget` children a call (the rest next call).
        Returns the children it cancelled."""
        if run_ids is None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for n in self._runs.partitions:
                    pipe.zrange(keys.orphans_key(n), 0, _BATCH - 1)
                run_ids = [str(r) for reply in await pipe.execute() for r in reply][:_BATCH]
        if not run_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(keys.run_key(run_id), "status")
                pipe.srandmember(keys.children_key(run_id), _BATCH)
            replies = await pipe.execute()
        cancelled: list[CancelledChild] = []
        for i, run_id in enumerate(run_ids):
            status, children = replies[2 * i], replies[2 * i + 1]
            if status is not None and status not in TERMINAL_STATUSES:
                continue  # not ended: its children are its own business
            reason = f"its parent run {run_id} ended {status or 'and expired'}"
            for child in map(str, children):
                if len(cancelled) >= budget:
                    return cancelled
                try:
                    outcome = await self._runs.cancel(child, reason)
                except (NotFoundError, FailedPreconditionError):
                    # Ended meanwhile (it left the set then), or gone: not to cancel.
                    await self._redis.srem(keys.children_key(run_id), child)
                    continue
                cancelled.append(CancelledChild(child, run_id, reason, outcome))
            await self._clear(
                keys=[keys.orphans_key(keys.partition_of(run_id)), keys.children_key(run_id)],
                args=[run_id],
            )
        return cancelled
