"""The deployment's partitions: how many, and the check that every control plane agrees.

Owns `keys.META` (a hash: "partitions", the count runs are spread over, and "layout", the
key layout's version), written once by the first control plane that starts on an empty
Redis and never removed, and reads `keys.OLD_LAYOUT_KEY`, a key only the layout before
partitions has. A run's partition is in its id (see `_keys`), so the count matters where
runs are made and where every partition is read (dispatch, leases, listings, counters, the
sweep): a control plane started with another count than the deployment's refuses to start,
saying which count to use.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from . import _keys as keys
from ._errors import FailedPreconditionError

__all__ = ["check_partitions"]


async def check_partitions(redis: aioredis.Redis, count: int) -> None:
    """Record the partition count on first start; FailedPreconditionError, saying what to
    do, when the deployment's Redis holds another count or the layout before partitions."""
    keys.partition_numbers(count)  # ValueError out of range
    if not await redis.exists(keys.META) and await redis.exists(keys.OLD_LAYOUT_KEY):
        raise FailedPreconditionError(
            "this Redis holds longline data in the key layout before partitions: finish or "
            "cancel its runs with the earlier release, then remove its ll:* keys before "
            "starting this one (docs/operations.md, 'Upgrading to partitions')",
            "OLD_KEY_LAYOUT",
        )
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hsetnx(keys.META, "partitions", str(count))
        pipe.hsetnx(keys.META, "layout", keys.LAYOUT)
        pipe.hmget(keys.META, "partitions", "layout")
        stored, layout = (await pipe.execute())[2]
    if layout != keys.LAYOUT:
        raise FailedPreconditionError(
            f"this Redis holds longline data in key layout {layout}, and this release uses "
            f"layout {keys.LAYOUT}: run the release that wrote it",
            "OLD_KEY_LAYOUT",
        )
    if stored != str(count):
        raise FailedPreconditionError(
            f"this deployment spreads runs over {stored} partitions, set when its Redis was "
            f"first used, and this process was started with --partitions {count}: start it "
            f"with --partitions {stored} (the count cannot change while runs are kept)",
            "PARTITIONS_MISMATCH",
        )
