"""Schedules: a tenant's cron schedules and the zset of when each ticks next.

Owns `keys.schedule_key(tenant, id)` (a hash per schedule: its spec as JSON, whether it is
paused, its next and last tick, its last run, its counters, and a version every change
bumps), `keys.schedule_ids_key(tenant)` (the tenant's schedule ids, for listing),
`keys.SCHEDULES_DUE` (a zset: "tenant\\tid" -> the next tick, ms) and
`keys.SCHEDULE_VERSIONS` (the counter versions come from). All four share the hash
tag {schedules}, so SAVE_SCHEDULE (create, update, pause, resume, delete) and
ADVANCE_SCHEDULE (a scheduler's pass, applied only over the version it read) change them
together. They are bounded by what tenants keep: at most `keys.MAX_SCHEDULES` each, removed
by DeleteSchedule.

What a tick does (cron, time zones, overlap and catch-up) is the control plane's scheduler's;
the runs it starts are made by `_runs` with the tick as their idempotency key, so that two
replicas, or a replica that died mid-tick and the one after it, make one run per tick.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from . import _keys as keys
from . import _scripts
from ._errors import AlreadyExistsError, NotFoundError, TooLargeError

__all__ = ["ScheduleRecord", "Schedules", "Tick"]


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """One schedule as its hash holds it (times in ms, Redis time; 0 = none)."""

    tenant: str
    schedule_id: str
    spec: dict[str, Any]
    paused: bool
    note: str
    next_ms: int
    last_tick_ms: int
    last_run_id: str
    started: int
    skipped: int
    missed: int
    buffered_ms: int
    last_error: str
    create_ms: int
    update_ms: int
    version: str

    @classmethod
    def decode(cls, tenant: str, h: dict[str, str]) -> ScheduleRecord:
        """From the schedule's hash."""

        def ms(name: str) -> int:
            return int(h.get(name) or 0)

        return cls(
            tenant=tenant,
            schedule_id=h.get("schedule_id", ""),
            spec=json.loads(h.get("spec") or "{}"),
            paused=h.get("paused") == "1",
            note=h.get("note", ""),
            next_ms=ms("next_ms"),
            last_tick_ms=ms("last_tick_ms"),
            last_run_id=h.get("last_run_id", ""),
            started=ms("started"),
            skipped=ms("skipped"),
            missed=ms("missed"),
            buffered_ms=ms("buffered_ms"),
            last_error=h.get("last_error", ""),
            create_ms=ms("create_ms"),
            update_ms=ms("update_ms"),
            version=h.get("version", ""),
        )


@dataclass(frozen=True, slots=True)
class Tick:
    """What one scheduler pass over a schedule did, to apply over the version it read."""

    last_tick_ms: int | None = None
    last_run_id: str = ""
    started: int = 0
    skipped: int = 0
    missed: int = 0
    next_ms: int | None = None
    buffered_ms: int | None = None
    last_error: str = ""
    look_again_ms: int | None = None  # sooner than the next tick (a buffered tick waits)
    extra: dict[str, Any] = field(default_factory=dict)


def _member(tenant: str, schedule_id: str) -> str:
    return f"{tenant}\t{schedule_id}"


def _ms(value: int | None) -> str:
    return "" if value is None else str(value)


class Schedules:
    """Schedules in their hashes, and when each ticks next."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._save = redis.register_script(_scripts.SAVE_SCHEDULE)
        self._advance = redis.register_script(_scripts.ADVANCE_SCHEDULE)

    async def _call(
        self,
        what: str,
        tenant: str,
        schedule_id: str,
        spec: dict[str, Any] | None = None,
        next_ms: int | None = None,
        *,
        paused: bool = False,
        note: str = "",
    ) -> None:
        reply = await self._save(
            keys=[
                keys.schedule_key(tenant, schedule_id),
                keys.schedule_ids_key(tenant),
                keys.SCHEDULES_DUE,
                keys.SCHEDULE_VERSIONS,
            ],
            args=[
                what,
                _member(tenant, schedule_id),
                schedule_id,
                json.dumps(spec or {}, sort_keys=True),
                _ms(next_ms),
                "1" if paused else "0",
                note,
                keys.MAX_SCHEDULES,
            ],
        )
        answer = int(reply[0])
        if answer == 0:
            raise AlreadyExistsError(
                f"schedule {schedule_id!r} exists already: update it, or delete it first",
                "SCHEDULE_EXISTS",
            )
        if answer == -1:
            raise NotFoundError(f"schedule {schedule_id!r} not found", "SCHEDULE_NOT_FOUND")
        if answer == 2:
            raise TooLargeError(
                f"this tenant has {keys.MAX_SCHEDULES} schedules, as many as it may: delete "
                "some first",
                "TOO_MANY_SCHEDULES",
            )

    async def create(
        self,
        tenant: str,
        schedule_id: str,
        spec: dict[str, Any],
        next_ms: int | None,
        paused: bool = False,
    ) -> ScheduleRecord:
        """Make a schedule that ticks first at `next_ms`; AlreadyExistsError when the tenant
        has one of that id, TooLargeError past MAX_SCHEDULES."""
        await self._call("create", tenant, schedule_id, spec, next_ms, paused=paused)
        return await self.get(tenant, schedule_id)

    async def update(
        self, tenant: str, schedule_id: str, spec: dict[str, Any], next_ms: int | None
    ) -> ScheduleRecord:
        """Replace its spec; it ticks next at `next_ms` (unless paused)."""
        await self._call("update", tenant, schedule_id, spec, next_ms)
        return await self.get(tenant, schedule_id)

    async def pause(self, tenant: str, schedule_id: str, note: str) -> ScheduleRecord:
        """Stop its ticks (a buffered tick is dropped)."""
        await self._call("pause", tenant, schedule_id, note=note)
        return await self.get(tenant, schedule_id)

    async def resume(self, tenant: str, schedule_id: str, next_ms: int | None) -> ScheduleRecord:
        """Let it tick again, next at `next_ms`."""
        await self._call("resume", tenant, schedule_id, next_ms=next_ms)
        return await self.get(tenant, schedule_id)

    async def delete(self, tenant: str, schedule_id: str) -> None:
        """Remove it."""
        await self._call("delete", tenant, schedule_id)

    async def get(self, tenant: str, schedule_id: str) -> ScheduleRecord:
        """One schedule; NotFoundError when the tenant has none of that id."""
        h = await self._redis.hgetall(keys.schedule_key(tenant, schedule_id))
        if not h:
            raise NotFoundError(f"schedule {schedule_id!r} not found", "SCHEDULE_NOT_FOUND")
        return ScheduleRecord.decode(tenant, h)

    async def page(
        self, tenant: str, size: int, after: str = ""
    ) -> tuple[list[ScheduleRecord], str]:
        """Up to `size` schedules by id after `after`; and the id to read on from ('' at
        the end)."""
        low = f"({after}" if after else "-"
        ids = await self._redis.zrangebylex(
            keys.schedule_ids_key(tenant), low, "+", start=0, num=size + 1
        )
        more = len(ids) > size
        ids = [str(i) for i in ids[:size]]
        async with self._redis.pipeline(transaction=False) as pipe:
            for schedule_id in ids:
                pipe.hgetall(keys.schedule_key(tenant, schedule_id))
            hashes = await pipe.execute()
        found = [ScheduleRecord.decode(tenant, h) for h in hashes if h]
        return found, (ids[-1] if more and ids else "")

    async def due(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, schedule id) of the schedules whose tick (or look again) is due."""
        members = await self._redis.zrangebyscore(
            keys.SCHEDULES_DUE, "-inf", now_ms, start=0, num=limit
        )
        out = []
        for member in map(str, members):
            tenant, tab, schedule_id = member.partition("\t")
            if tab:
                out.append((tenant, schedule_id))
            else:  # not one this version wrote: dropped rather than passed over for ever
                await self._redis.zrem(keys.SCHEDULES_DUE, member)
        return out

    async def next_due_ms(self) -> int | None:
        """When the earliest schedule is due (ms), or None."""
        first = await self._redis.zrange(keys.SCHEDULES_DUE, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def put_off(self, tenant: str, schedule_id: str, until_ms: int) -> None:
        """Look at a schedule again only at `until_ms` (one this version cannot read)."""
        await self._redis.zadd(
            keys.SCHEDULES_DUE, {_member(tenant, schedule_id): until_ms}, xx=True
        )

    async def forget(self, tenant: str, schedule_id: str) -> None:
        """Drop a due entry whose schedule is gone."""
        await self._redis.zrem(keys.SCHEDULES_DUE, _member(tenant, schedule_id))

    async def advance(self, record: ScheduleRecord, tick: Tick) -> bool:
        """Apply a pass over the schedule as `record` read it; False when it changed since
        (nothing written: the next pass reads it again)."""
        reply = await self._advance(
            keys=[
                keys.schedule_key(record.tenant, record.schedule_id),
                keys.SCHEDULES_DUE,
                keys.SCHEDULE_VERSIONS,
            ],
            args=[
                _member(record.tenant, record.schedule_id),
                record.version,
                _ms(tick.last_tick_ms),
                tick.last_run_id,
                tick.started,
                tick.skipped,
                tick.missed,
                _ms(tick.next_ms),
                _ms(tick.buffered_ms),
                tick.last_error[:1000],
                _ms(tick.look_again_ms),
            ],
        )
        return int(reply[0]) == 1
