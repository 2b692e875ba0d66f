"""Reads of a run's event stream that are bounded in bytes as well as in count.

Redis cannot say how large a stream entry is before it sends it, so a page is read one of
two ways (measured: 500 events of 100 bytes cost Redis 0.4 ms as XRANGE and 4 to 7 ms as
the script below, whose cost is in copying entries into Lua and back):

- When the whole stream is smaller than the budget (MEMORY USAGE, which sums the stream's
  listpacks, plus a margin per entry for what an entry grows by when sent: its id and field
  names, integers as text), a plain XRANGE cannot exceed it. Most runs are read this way.
- Otherwise READ_PAGE walks the range in small steps inside Redis, adding up each entry's
  id, field names and values, and ends the page before the entry that would pass the budget:
  a page holds at least one entry, however large.
"""

from __future__ import annotations

PAGE_EVENTS = 500  # events in one page at most
PAGE_BYTES = 1024 * 1024  # bytes in one page at most, but for a single larger event
# What one entry may take when sent beyond what it takes in its listpack: its id (at most
# 41 characters), field names that the listpack stores once per node, and integers stored
# in binary (at most 20 characters each as text), for the seven fields an event has.
ENTRY_MARGIN = 256

# KEYS: the events stream. ARGV: XRANGE's start ('-', or '(' and an id), most entries, most
# bytes. Returns {more, bytes, entries}: entries as XRANGE gives them, in order, as many as
# fit in the budget and at least one; more is 1 when the count or the budget ended the page.
# Steps of 16 entries bound what Redis itself holds at once.
READ_PAGE = """
local start, most, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, used = {}, 0
while true do
  local want = math.min(16, most - #out)
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', want)
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
"""
