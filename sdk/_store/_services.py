"""Component services backed by Redis: the result cache and cluster-wide limits.

Owns `keys.cache_key(key)` (a component's cached result, PX its TTL) and
`keys.limit_key(name, part)` (a limit's window, slots and pause). Every key of one limit
shares the hash tag `{name}`; admission and release are Lua scripts, so every worker sees
the same window and the same slots.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis

from .._policies import Concurrency, Limit, RateLimit
from . import _keys as keys

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: requests zset, tokens zset, pause key. ARGV: member, window ms, request limit (0 = none),
# token limit (0 = none). Returns 0 when admitted, else the ms to wait before asking again.
_RATE_ACQUIRE = (
    _NOW
    + """
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused > now then return paused - now end
local window = tonumber(ARGV[2])
local max_requests = tonumber(ARGV[3])
local max_tokens = tonumber(ARGV[4])
if max_requests > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= max_requests then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + window - now + 1)
  end
end
if max_tokens > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local used = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    used = used + tonumber(string.match(member, ':(%d+)$'))
  end
  if used >= max_tokens then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + window - now + 1)
  end
end
if max_requests > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], window)
end
return 0
"""
)

# KEYS: tokens zset. ARGV: member ("id:tokens"), window ms.
_RATE_TOKENS = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)

# KEYS: pause key. ARGV: ms. Holds back every caller of the limit until now + ms (never earlier).
_PAUSE = (
    _NOW
    + """
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], string.format('%.0f', until_ms), 'PX', tonumber(ARGV[1]) + 1000)
end
return 1
"""
)

# KEYS: holders zset. ARGV: member, limit, hold ms. Returns 1 when a slot was taken, else 0.
_SLOT_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
)

# A minute plus a one-second guard, so that a provider counting arrivals at its end, after
# network jitter, never sees more than the limit in its own minute.
_WINDOW_MS = 61_000


class RedisServices:
    """The Services of components running in a worker."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._rate = redis.register_script(_RATE_ACQUIRE)
        self._tokens = redis.register_script(_RATE_TOKENS)
        self._pause = redis.register_script(_PAUSE)
        self._slot = redis.register_script(_SLOT_ACQUIRE)

    async def cache_get(self, key: str) -> str | None:
        value = await self._redis.get(keys.cache_key(key))
        return None if value is None else str(value)

    async def cache_set(self, key: str, value: str, ttl: float) -> None:
        await self._redis.set(keys.cache_key(key), value, px=max(1, int(ttl * 1000)))

    async def acquire(self, limits: Sequence[Limit]) -> Callable[[], Awaitable[None]]:
        held: list[tuple[str, str]] = []
        try:
            for limit in limits:
                if isinstance(limit, RateLimit):
                    await self._admit(limit)
                elif isinstance(limit, Concurrency):
                    held.append(await self._take_slot(limit))
        except BaseException:
            await self._free(held)
            raise

        async def release() -> None:
            await self._free(held)

        return release

    async def _admit(self, limit: RateLimit) -> None:
        member = secrets.token_hex(8)
        names = [keys.limit_key(limit.name, p) for p in ("requests", "tokens", "pause")]
        args = [member, _WINDOW_MS, limit.requests_per_minute or 0, limit.tokens_per_minute or 0]
        while True:
            wait_ms = int(await self._rate(keys=names, args=args))
            if wait_ms <= 0:
                return
            # The window says exactly when a place frees; jitter spreads the waiting workers.
            await asyncio.sleep(wait_ms / 1000 * (1 + random.random() * 0.1))

    async def _take_slot(self, limit: Concurrency) -> tuple[str, str]:
        key = keys.limit_key(limit.name, "slots")
        member = secrets.token_hex(8)
        delay = 0.01
        while not await self._slot(
            keys=[key], args=[member, limit.limit, int(limit.hold_timeout * 1000)]
        ):
            # Slots free when holders finish; waiters look again with capped backoff.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)
        return key, member

    async def _free(self, held: list[tuple[str, str]]) -> None:
        for key, member in held:
            await self._redis.zrem(key, member)

    async def record_tokens(self, limits: Sequence[Limit], tokens: int) -> None:
        for limit in limits:
            if isinstance(limit, RateLimit) and limit.tokens_per_minute:
                await self._tokens(
                    keys=[keys.limit_key(limit.name, "tokens")],
                    args=[f"{secrets.token_hex(6)}:{tokens}", _WINDOW_MS],
                )

    async def pause(self, limits: Sequence[Limit], seconds: float) -> None:
        for limit in limits:
            if isinstance(limit, RateLimit):
                await self._pause(
                    keys=[keys.limit_key(limit.name, "pause")], args=[int(seconds * 1000)]
                )
