"""A run's events in Redis: ids, the stream encoding, pages bounded in bytes, and the
channels that publish them live.

Owns `keys.events_key(run_id)` (a stream: one entry per event, written only by the
scripts in `_scripts`, which also publish each event on a channel of the same name) and
reads it; opening a stream reads the run's status from its hash (`_runs`) in the same round
trip, and, when the stream is short, its first page too (OPEN_PAGE).

Pages are bounded in count and in bytes. Redis cannot say how large a stream entry is
before it sends it, so a page is read one of two ways (measured: 500 events of 100 bytes
cost Redis 0.4 ms as XRANGE and 4 to 7 ms as the script below, whose cost is in copying
entries into Lua and back):

- When the whole stream is smaller than the budget (MEMORY USAGE, which sums the stream's
  listpacks, plus a margin per entry for what an entry grows by when sent: its id and field
  names, integers as text), a plain XRANGE cannot exceed it. Most runs are read this way.
- Otherwise READ_PAGE walks the range in small steps inside Redis, adding up each entry's
  id, field names and values, and ends the page before the entry that would pass the budget:
  a page holds at least one entry, however large.

`EventFeed` is the subscriber side of those channels, on one dedicated connection (which
also holds the hub's own channel, `keys.hub_channel`): the control plane's event hub
(control_plane/_hub.py) keeps the no-gap protocol on top of it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .._events import TERMINAL_EVENTS, TERMINAL_STATUSES, WIRE_NAMES, EventBody
from . import _keys as keys
from ._errors import InvalidArgumentError, NotFoundError
from ._fanout import Fanout
from ._fanout import Subscribed as FanoutSubscribed

__all__ = [
    "PAGE_BYTES",
    "PAGE_EVENTS",
    "EventFeed",
    "EventPage",
    "Events",
    "OpenedStream",
    "Published",
    "StoredEvent",
    "Subscribed",
    "encode_event",
    "event_id_key",
    "parse_event_id",
]

log = logging.getLogger("longline.store")
# A stream entry's field names: its type, its attempt, then the body's (`EventBody`'s wire
# names); the scripts accept these and no others.
TYPE, ATTEMPT = "t", "a"
FIELD_NAMES: tuple[str, ...] = (TYPE, ATTEMPT, *(wire for _, wire in WIRE_NAMES))
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # fullmatch: ASCII only, no newline

PAGE_EVENTS = 500  # events in one page at most
PAGE_BYTES = 1024 * 1024  # bytes in one page at most, but for a single larger event
# What one entry may take when sent beyond what it takes in its listpack: its id (at most
# 41 characters), field names that the listpack stores once per node, and integers stored
# in binary (at most 20 characters each as text), for the fields an event has (FIELD_NAMES).
ENTRY_MARGIN = 256
# A stream of at most this many entries has its first page read by OPEN_PAGE itself (copying
# a few entries through Lua costs little; copying hundreds is what makes READ_PAGE dear).
OPEN_PAGE_ENTRIES = 32
# KEYS: the events stream. ARGV: XRANGE's start ('-', or '(' and an id), most entries, most
# bytes. Returns {more, bytes, entries}: entries as XRANGE gives them, in order, as many as
# fit in the budget and at least one; more is 1 when the count or the budget ended the page.
# Steps of 16 entries bound what Redis itself holds at once.
_PAGE = """
local function page(key, start, most, budget)
  local out, used = {}, 0
  while true do
    local want = math.min(16, most - #out)
    local batch = redis.call('XRANGE', key, start, '+', 'COUNT', want)
    for _, entry in ipairs(batch) do
      local size = #entry[1]
      for _, v in ipairs(entry[2]) do size = size + #v end
      if #out > 0 and used + size > budget then return {1, used, out} end
      out[#out + 1] = entry
      used = used + size
    end
    if #batch < want then return {0, used, out} end
    if #out == most then return {1, used, out} end
    start = '(' .. batch[#batch][1]
  end
end
"""
READ_PAGE = _PAGE + "return page(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))\n"

# KEYS: a run's hash, its events stream. ARGV: as READ_PAGE's ('' for the start: no page),
# the caller's tenant, the most entries the stream may hold for the page to be read here.
# Returns {run_id, tenant, status, last_event_id, the page as READ_PAGE returns it, or {}
# when not read}: StreamRun's check that the run is there and the caller's, and, for a short
# stream (a live run's, most often), its first page, in one call.
OPEN_PAGE = (
    _PAGE
    + """
local run = redis.call('HMGET', KEYS[1], 'run_id', 'tenant', 'status', 'last_event_id')
local first = {}
if run[1] and (run[2] or '') == ARGV[4] and ARGV[1] ~= '' and
  redis.call('XLEN', KEYS[2]) <= tonumber(ARGV[5]) then
  first = page(KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
end
return {run[1] or false, run[2] or '', run[3] or '', run[4] or '', first}
"""
)


def parse_event_id(event_id: str) -> tuple[int, int]:
    """The (milliseconds, sequence) of an event id; InvalidArgumentError when malformed."""
    match = _EVENT_ID.fullmatch(event_id)
    if not match:
        raise InvalidArgumentError(
            f"after_event_id {event_id[:60]!r} is not an event id: expected the "
            "'<milliseconds>-<sequence>' form of an event_id this server sent, e.g. "
            "'1732630000000-0', or empty to start from the first event",
            "INVALID_EVENT_ID",
        )
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > _MAX_ID_PART or seq > _MAX_ID_PART:
        raise InvalidArgumentError(
            f"after_event_id {event_id[:60]!r} is out of range: both parts of an event id "
            f"are at most {_MAX_ID_PART}",
            "INVALID_EVENT_ID",
        )
    return ms, seq


_MAX_ID_PART = 2**64 - 1


def _range_start(after: str) -> str | None:
    """XRANGE's start for the events after `after`; None when no id can follow it."""
    if not after:
        return "-"
    if event_id_key(after) == (_MAX_ID_PART, _MAX_ID_PART):
        return None
    return f"({after}"


def event_id_key(event_id: str) -> tuple[int, int]:
    """Sort key of a well-formed event id (ids compare by time, then sequence)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class StoredEvent(EventBody):
    """One event as stored in a run's stream: its id, type and attempt, and its body."""

    event_id: str
    type: str  # the EventType name without its prefix, e.g. "STATUS"
    attempt: int

    @property
    def time_ms(self) -> int:
        """When Redis stored the event (the id's millisecond part)."""
        return event_id_key(self.event_id)[0]

    @property
    def terminal(self) -> bool:
        """Whether this is the run's one terminal event."""
        return self.type in TERMINAL_EVENTS

    @classmethod
    def decode(cls, event_id: str, fields: dict[str, str]) -> StoredEvent:
        """From a stream entry."""
        return cls(
            event_id=event_id,
            type=fields.get(TYPE, "UNSPECIFIED"),
            attempt=int(fields.get(ATTEMPT, "0")),
            **{name: fields.get(wire, "") for name, wire in WIRE_NAMES},
        )


def encode_event(type: str, attempt: int, body: EventBody | str = "") -> list[str]:
    """The flat field list of a stream entry; empty fields are left out. A str body is a
    message alone."""
    if isinstance(body, str):
        body = EventBody(message=body)
    out = [TYPE, type, ATTEMPT, str(attempt)]
    for name, wire in WIRE_NAMES:
        value = getattr(body, name)
        if value:
            out += [wire, value]
    return out


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events of one run in id order: at most a count, and at most a byte budget of ids, field
    names and values unless it is a single event."""

    events: list[StoredEvent]
    more: bool  # a limit ended the page: read on after its last event
    bytes: int


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """The start of a StreamRun: its first page and what the run's hash says."""

    page: EventPage
    ended: bool  # the run is in a terminal status
    last_event_id: str  # its newest event when the page was read ('' if it has none)


def _entries_page(entries: list[tuple[str, dict[str, str]]], count: int) -> EventPage:
    size = sum(len(i) + sum(len(k) + len(v) for k, v in f.items()) for i, f in entries)
    events = [StoredEvent.decode(i, f) for i, f in entries]
    return EventPage(events, more=len(events) == count, bytes=size)


def _script_page(reply: Any) -> EventPage:
    more, size, entries = reply
    events = [StoredEvent.decode(i, dict(zip(f[::2], f[1::2], strict=True))) for i, f in entries]
    return EventPage(events, more=bool(int(more)), bytes=int(size))


class Events:
    """Reads of runs' event streams (the attempt scripts write them)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._read_page = redis.register_script(READ_PAGE)
        self._open_page = redis.register_script(OPEN_PAGE)
        self._memory_usage = True  # False once Redis refused MEMORY USAGE: measure every page

    async def open(
        self,
        run_id: str,
        tenant: str,
        after: str,
        count: int = PAGE_EVENTS,
        max_bytes: int = PAGE_BYTES,
    ) -> OpenedStream:
        """The run's first page of events after the cursor (see read_page), whether it has
        ended and its newest event's id, read after the check that the run exists and is
        `tenant`'s (NotFoundError otherwise)."""
        start = _range_start(after)
        found, owner, status, last, first = await self._open_page(
            keys=[keys.run_key(run_id), keys.events_key(run_id)],
            args=[start or "", max(1, count), max_bytes, tenant, OPEN_PAGE_ENTRIES],
        )
        if not found or (owner or "") != tenant:
            raise NotFoundError(f"run {run_id!r} not found", "RUN_NOT_FOUND")
        if first:
            page = _script_page(first)
        elif start is not None:  # a longer stream: read as read_page reads
            page = await self.read_page(run_id, after, count, max_bytes)
        else:
            page = EventPage([], False, 0)
        return OpenedStream(page, status in TERMINAL_STATUSES, last or "")

    async def read_page(
        self,
        run_id: str,
        after: str,
        count: int = PAGE_EVENTS,
        max_bytes: int = PAGE_BYTES,
    ) -> EventPage:
        """Up to `count` events after the cursor ('' = from the first) and up to `max_bytes`
        of their ids, field names and values, but always one event when there is one."""
        start = _range_start(after)
        if start is None:
            return EventPage([], False, 0)
        key = keys.events_key(run_id)
        usage: int | None = None
        if self._memory_usage:
            try:
                usage = await self._redis.memory_usage(key, samples=0) or 0
            except ResponseError as exc:
                usage = self._usage([exc])
        return await self._page(key, start, count, max_bytes, usage)

    async def read_events(
        self, run_id: str, after: str, count: int, max_bytes: int = PAGE_BYTES
    ) -> list[StoredEvent]:
        """The events of read_page: fewer than `count` does not mean there are no more."""
        return (await self.read_page(run_id, after, count, max_bytes)).events

    def _usage(self, reply: list[Any]) -> int | None:
        """The stream's size from a MEMORY USAGE reply; None when it is not known."""
        if not reply:
            return None
        if isinstance(reply[0], ResponseError):  # not allowed here (an ACL, a managed Redis)
            log.info("MEMORY USAGE refused (%s): every page of events is measured", reply[0])
            self._memory_usage = False
            return None
        if isinstance(reply[0], Exception):
            raise reply[0]
        return int(reply[0] or 0)

    async def _page(
        self, key: str, start: str, count: int, max_bytes: int, usage: int | None
    ) -> EventPage:
        count = max(1, count)
        if usage is not None and usage + count * ENTRY_MARGIN <= max_bytes:
            return _entries_page(await self._redis.xrange(key, start, "+", count=count), count)
        return _script_page(await self._read_page(keys=[key], args=[start, count, max_bytes]))


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Redis confirmed a SUBSCRIBE to `channel` (replies come in the order they were sent)."""

    channel: str


@dataclass(frozen=True, slots=True)
class Published:
    """An event published on `channel`; `event` is None when the message is not one the
    scripts wrote (`problem` says why): the stream holds the truth, read it again."""

    channel: str
    event: StoredEvent | None
    problem: str = ""


def decode_published(data: str) -> StoredEvent:
    """An event from its message: the id, a space, the fields as a flat JSON array (as the
    scripts' emit publishes it). ValueError (or TypeError) when it is not one."""
    event_id, _, payload = data.partition(" ")
    flat = json.loads(payload)
    if not isinstance(flat, list) or not all(isinstance(x, str) for x in flat):
        raise ValueError("the fields are not a list of strings")
    event_id_key(event_id)  # raises ValueError when it is not an id
    return StoredEvent.decode(event_id, dict(zip(flat[::2], flat[1::2], strict=True)))


class EventFeed:
    """Live events of runs, over connections of their own (they hold the subscriptions):
    one per Redis node the watched runs' channels live on (see `_fanout`).

    `channel(run_id)` names a run's channel. `messages()` yields Subscribed and Published in
    the order each node sends them, and raises when a connection is lost or a channel's slot
    moves: then `renew()` starts over on new connections, and what was published meanwhile
    is lost (read it from the stream). The feed is always subscribed to a channel of its own
    (`own_channel`), so it can wait on the connection before any run is watched.
    """

    def __init__(self, reader: aioredis.Redis, owner: str) -> None:
        self.own_channel = keys.hub_channel(owner)
        self._fanout = Fanout(reader, self.own_channel)

    @staticmethod
    def channel(run_id: str) -> str:
        """The channel a run's events are published on."""
        return keys.events_key(run_id)

    @property
    def connections(self) -> int:
        """How many subscribing connections are open (one per node in use)."""
        return self._fanout.connections

    async def open(self) -> None:
        """Subscribe to the feed's own channel (confirmed by a Subscribed message)."""
        await self._fanout.open()

    async def subscribe(self, channel: str) -> None:
        """Subscribe to a run's channel (confirmed by a Subscribed message)."""
        await self._fanout.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving a channel's events. Without a connection (closed, or renewed and
        not yet open) there is nothing to stop, and none is opened for it: one opened after
        the feed closed would be left open."""
        await self._fanout.unsubscribe(channel)

    async def messages(self) -> AsyncIterator[Subscribed | Published]:
        """What arrives on the connections, until one is lost (this raises)."""
        async for message in self._fanout.messages():
            if isinstance(message, FanoutSubscribed):
                yield Subscribed(message.channel)
                continue
            try:
                yield Published(message.channel, decode_published(message.data))
            except (ValueError, TypeError, AttributeError) as exc:
                yield Published(message.channel, None, str(exc))

    async def renew(self) -> None:
        """Drop the connections' subscriptions and start over on new ones."""
        await self._fanout.renew()

    async def aclose(self) -> None:
        """Close the subscriptions (errors of a dead connection are ignored); later
        subscriptions are refused and unsubscriptions do nothing."""
        await self._fanout.aclose()
