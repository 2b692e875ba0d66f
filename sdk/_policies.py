"""Small value objects that configure components: caching and cluster-wide limits."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Cache", "Concurrency", "Limit", "RateLimit"]


@dataclass(frozen=True)
class Cache:
    """Cache a component's results across runs, in Redis, for `ttl` seconds.

    The key is the component's name, `version` (bump it when the component's
    behaviour changes) and a canonical hash of its JSON arguments. Results larger
    than `max_bytes` of JSON are not cached, with a warning.
    """

    ttl: float
    version: str = "1"
    max_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.ttl <= 0:
            raise ValueError(f"Cache.ttl must be positive, got {self.ttl}")


@dataclass(frozen=True)
class RateLimit:
    """At most `requests_per_minute` calls, and roughly `tokens_per_minute` tokens, in any
    60-second window, across every worker that uses the same `name`.

    Requests are admitted exactly (a sliding window in Redis); tokens are counted
    after each call, so concurrent calls may overshoot the token limit a little.
    A 429 with Retry-After from a provider pauses every caller of the name.
    """

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("RateLimit needs a name, e.g. RateLimit('openai', ...)")
        if not (self.requests_per_minute or self.tokens_per_minute):
            raise ValueError("RateLimit needs requests_per_minute and/or tokens_per_minute")


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` calls in flight at once across every worker using `name`.

    A slot held by a worker that died is freed after `hold_timeout` seconds.
    """

    name: str
    limit: int
    hold_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.name or self.limit < 1:
            raise ValueError("Concurrency needs a name and a limit of at least 1")


Limit = RateLimit | Concurrency
