"""Notices between control-plane replicas: "cancel this attempt on that worker".

Owns the pub/sub channel `keys.CONTROL_CHANNEL` (not a key: nothing is stored). A notice is
at most once: one lost while Redis is away is not fatal, since the worker's next heartbeat
or write finds the run cancelled and stops it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from . import _keys as keys
from ._connection import ready_to_subscribe

__all__ = ["CancelNotice", "Listening", "Notices"]

log = logging.getLogger("longline.store")


@dataclass(frozen=True, slots=True)
class CancelNotice:
    """Stop attempt `attempt` of run `run_id` on worker `worker_id`."""

    run_id: str
    attempt: int
    worker_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Listening:
    """The subscription is in place (notices published from now on arrive)."""


def _parse(notice: dict[str, object]) -> CancelNotice:
    """A cancel notice as a replica can act on it: text that encodes, an attempt that fits
    the protocol's int32; ValueError or TypeError otherwise."""
    run_id, attempt = notice["cancel"], notice["attempt"]
    if not isinstance(run_id, str) or type(attempt) is not int or not 0 <= attempt < 2**31:
        raise TypeError(f"run {run_id!r}, attempt {attempt!r}")
    parsed = CancelNotice(
        run_id, attempt, str(notice.get("worker_id", "")), str(notice.get("reason", ""))
    )
    for text in (parsed.run_id, parsed.worker_id, parsed.reason):
        text.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return parsed


class Notices:
    """Publishing and hearing notices."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def cancel(self, notice: CancelNotice) -> None:
        """Tell every replica (the one the worker is connected to acts on it)."""
        await self._redis.publish(
            keys.CONTROL_CHANNEL,
            json.dumps(
                {
                    "cancel": notice.run_id,
                    "attempt": notice.attempt,
                    "worker_id": notice.worker_id,
                    "reason": notice.reason,
                }
            ),
        )

    async def listen(self) -> AsyncIterator[Listening | CancelNotice]:
        """Listening once the subscription is in place, then every notice, until the
        connection is lost (a Redis error). A message that is not a notice is logged and
        skipped."""
        await ready_to_subscribe(self._redis)
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(keys.CONTROL_CHANNEL)
            async for message in pubsub.listen():
                if message.get("type") == "subscribe":
                    yield Listening()
                if message.get("type") != "message":
                    continue
                try:
                    notice = json.loads(message["data"])
                    if "cancel" not in notice:
                        continue
                    parsed = _parse(notice)
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    log.error("ignored a control notice that is not one: %s", exc)
                    continue
                yield parsed
