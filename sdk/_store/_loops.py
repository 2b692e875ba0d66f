"""How long-lived loops live through Redis faults: capped backoff, and which errors pass.

Every loop of both planes that talks to Redis survives every Redis error: it logs one line,
waits a capped, jittered, growing delay, and tries again; a success resets the delay. No
loop exits on a Redis error and none spins. Writes that must land (a run's events, its
result) are retried only for errors that pass (`transient`): a connection lost, a server
loading its data, a primary demoted to a read-only replica for a failover, out of memory
for a while. Any other error reply is a bug or bad data and is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re

from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Backoff", "transient"]

# Error replies a server gives while it changes role or state; they pass by themselves. A
# script's command that meets one is reported inside the script's error ("... -READONLY").
_PASSING = re.compile(
    r"(^|-)(READONLY|LOADING|OOM|MASTERDOWN|UNBLOCKED|BUSY|NOREPLICAS|TRYAGAIN|CLUSTERDOWN)\b"
)


def transient(exc: BaseException) -> bool:
    """Whether a Redis error passes by itself, so the same command may be sent again."""
    if isinstance(
        exc,
        RedisConnectionError  # includes LOADING (BusyLoadingError)
        | RedisTimeoutError
        | ReadOnlyError
        | OutOfMemoryError
        | ClusterDownError
        | TryAgainError
        | OSError,
    ):
        return True
    return isinstance(exc, ResponseError) and _PASSING.search(str(exc)) is not None


class Backoff:
    """A capped exponential delay with jitter: first, 2x first, ... up to cap."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._delay = first
        self.failures = 0  # since the last success

    def reset(self) -> None:
        """A success: the next failure waits `first` again."""
        self._delay = self.first
        self.failures = 0

    async def wait(self, log: logging.Logger, what: str, exc: BaseException) -> None:
        """Log the failure in one line and sleep before the next try."""
        delay = self._delay * (0.5 + random.random() / 2)
        self.failures += 1
        log.warning(
            "%s: %s: %s; retrying in %.2f s (failure %d)",
            what,
            type(exc).__name__,
            str(exc)[:200] or "no detail",
            delay,
            self.failures,
        )
        self._delay = min(self._delay * 2, self.cap)
        await asyncio.sleep(delay)
