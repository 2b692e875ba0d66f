"""Lua scripts: every transition of run state happens inside Redis, atomically.

A worker's writes are fenced: they name the attempt they belong to and are
refused (nil reply) unless the run is RUNNING under that very attempt, so a
worker whose lease moved on can no longer touch the run.
"""

from __future__ import annotations

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local function holds(run, attempt)
  local st = redis.call('HMGET', run, 'status', 'attempt')
  return st[1] == 'RUNNING' and st[2] == attempt
end
"""

# KEYS: run, events, idempotency, runs index, workflow index, queue
# ARGV: run_id, workflow, input_json, labels_json, idempotency key ('' = none)
CREATE_RUN = (
    _PRELUDE
    + """
if ARGV[5] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[3], ARGV[1])
end
local now = now_ms()
local id = redis.call('XADD', KEYS[2], '*', 't', 'RUN_QUEUED', 'a', '1', 'm', 'queued')
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'workflow', ARGV[2], 'status', 'QUEUED',
  'attempt', '1', 'input_json', ARGV[3], 'labels_json', ARGV[4], 'idempotency_key', ARGV[5],
  'create_ms', now, 'update_ms', now, 'last_event_id', id)
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('XADD', KEYS[6], '*', 'run_id', ARGV[1], 'attempt', '1')
return {1, ARGV[1]}
"""
)

# KEYS: run. ARGV: attempt, worker_id, replica_id, lease_ms
# Returns {1, workflow, input_json} when this caller now holds the attempt, else {0}.
CLAIM_RUN = (
    _PRELUDE
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'workflow', 'input_json')
if st[1] ~= 'QUEUED' or st[2] ~= ARGV[1] then return {0} end
local now = now_ms()
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'worker_id', ARGV[2], 'replica_id', ARGV[3],
  'lease_expires_ms', string.format('%.0f', tonumber(now) + tonumber(ARGV[4])), 'update_ms', now)
return {1, st[3], st[4]}
"""
)

# KEYS: run, events. ARGV: attempt, n, then per event: field count, field, value, ...
# Returns the new event ids, or nil when the attempt no longer holds the run.
APPEND_EVENTS = (
    _PRELUDE
    + """
if not holds(KEYS[1], ARGV[1]) then return false end
local ids = {}
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[i])
  ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
redis.call('HSET', KEYS[1], 'last_event_id', ids[#ids])
return ids
"""
)

# KEYS: run, events. ARGV: attempt, status, result_json, error_type, error_message,
# error_component, then the terminal event's fields. Returns the event id or nil.
FINISH_RUN = (
    _PRELUDE
    + """
if not holds(KEYS[1], ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 7))
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'result_json', ARGV[3], 'error_type', ARGV[4],
  'error_message', ARGV[5], 'error_component', ARGV[6], 'update_ms', now_ms(),
  'last_event_id', id, 'lease_expires_ms', '')
return id
"""
)

# KEYS: run, events. ARGV: reason.
# Returns {-1} unknown run, {0, status} already finished, {1, previous status, attempt, worker}.
CANCEL_RUN = (
    _PRELUDE
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker_id')
if not st[1] then return {-1} end
if st[1] ~= 'QUEUED' and st[1] ~= 'RUNNING' then return {0, st[1]} end
local id = redis.call('XADD', KEYS[2], '*', 't', 'RUN_CANCELLED', 'a', st[2], 'm', ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'cancel_reason', ARGV[1],
  'update_ms', now_ms(), 'last_event_id', id, 'lease_expires_ms', '')
return {1, st[1], st[2], st[3] or ''}
"""
)

# KEYS: run. ARGV: attempt, lease_ms. Returns 1 while the attempt holds the run, else 0.
HEARTBEAT = (
    _PRELUDE
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'lease_expires_ms', string.format('%.0f', now + tonumber(ARGV[2])))
return 1
"""
)

# KEYS: run, events, queue. ARGV: attempt, reason.
# Puts a held attempt back in the queue as the next attempt. Returns 1, or 0 when not held.
REQUEUE_RUN = (
    _PRELUDE
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
local next_attempt = tostring(tonumber(ARGV[1]) + 1)
local id = redis.call('XADD', KEYS[2], '*', 't', 'RUN_RETRYING', 'a', next_attempt, 'm', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'QUEUED', 'attempt', next_attempt, 'worker_id', '',
  'update_ms', now_ms(), 'last_event_id', id, 'lease_expires_ms', '')
redis.call('XADD', KEYS[3], '*', 'run_id', redis.call('HGET', KEYS[1], 'run_id'),
  'attempt', next_attempt)
return 1
"""
)
