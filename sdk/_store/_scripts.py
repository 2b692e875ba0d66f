"""Lua scripts: every transition of run state happens inside Redis, atomically.

A worker's writes are fenced: they name the attempt they belong to and are
refused (nil reply) unless the run is RUNNING under that very attempt, so a
worker whose lease moved on can no longer touch the run. They also carry a
per-attempt sequence number, so a write retried after a lost reply (a Redis
blip) is applied once.

Run hash fields: run_id workflow status attempt input_json labels_json
idempotency_key create_ms update_ms last_event_id worker_id replica_id
lease_expires_ms max_attempts lost (lease expiries so far) seq (last applied
write of the attempt) attempt_span ('<attempt>@<worker_id> <span>': the holder the claim
wrote RUN_STARTED for, and its span; '' when the worker writes it) result_json error_type
error_message error_component cancel_reason.
"""

from __future__ import annotations

from .._events import EMITTABLE, EventType
from ._events import FIELD_NAMES


def _lua_set(names: tuple[str, ...]) -> str:
    """A Lua table literal that holds each name (as a key, true)."""
    return "{" + ", ".join(f"{name}=true" for name in names) + "}"


_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%.0f', n) end
-- A holder is "<attempt>@<worker_id>": the attempt holds the run on that very worker. A claim
-- that a failover lost lets the same attempt be claimed again by another worker; the first
-- one is then refused, not mixed with it.
local function holds(run, holder)
  local attempt, worker = string.match(holder, '^(%d+)@(.+)$')
  if not attempt then return false end
  local st = redis.call('HMGET', run, 'status', 'attempt', 'worker_id')
  return st[1] == 'RUNNING' and st[2] == attempt and st[3] == worker
end
-- Queued runs by tenant (for its limit), queued and running runs by workflow and build (for
-- blue-green deploys), run counts by status and queued runs by workflow (for metrics): the
-- last four KEYS.
local TENANTS = KEYS[#KEYS - 3]
local BUILDS = KEYS[#KEYS - 2]
local STATS = KEYS[#KEYS - 1]
local QUEUED = KEYS[#KEYS]
-- A counter that falls to zero is removed, so counters of builds and tenants of the past
-- do not pile up.
local function count(hash, field, delta)
  if redis.call('HINCRBY', hash, field, delta) == 0 then redis.call('HDEL', hash, field) end
end
local function per_build(run, status, delta)
  if status ~= 'QUEUED' and status ~= 'RUNNING' and status ~= 'WAITING' then return end
  local wb = redis.call('HMGET', run, 'workflow', 'build')
  count(BUILDS, wb[1] .. '\t' .. (wb[2] or '') .. '\t' .. status, delta)
end
local function per_tenant(run, status, delta)
  if status ~= 'QUEUED' then return end
  count(TENANTS, redis.call('HGET', run, 'tenant') or '', delta)
end
-- Publish on a channel of the script's own slot. Redis 7 has sharded pub/sub: the message
-- goes to the subscribers of the node that owns the channel's slot only, where PUBLISH would
-- send it to every node of a cluster. Subscribers make this same test per node (_fanout).
local function publish(channel, message)
  if redis.REDIS_VERSION_NUM then
    redis.call('SPUBLISH', channel, message)
  else
    redis.call('PUBLISH', channel, message)
  end
end
-- Queue an attempt and tell the replicas that the queue has an entry to read.
local function enqueue(queue, channel, run_id, attempt)
  redis.call('XADD', queue, '*', 'run_id', run_id, 'attempt', attempt)
  publish(channel, queue)
end
local function moved(run, from, to)
  if from then
    redis.call('HINCRBY', STATS, from, -1)
    per_build(run, from, -1)
    per_tenant(run, from, -1)
  end
  if to then
    redis.call('HINCRBY', STATS, to, 1)
    per_build(run, to, 1)
    per_tenant(run, to, 1)
  end
end
-- Append an event to a run's stream and tell the replicas watching it: the channel is the
-- stream's key, the message the event's id, a space, and its fields as a JSON array.
local function emit(stream, fields)
  local id = redis.call('XADD', stream, '*', unpack(fields))
  publish(stream, id .. ' ' .. cjson.encode(fields))
  return id
end
-- Child runs. The scripts that end a run (FINISH_RUN, CANCEL_RUN, and give_up in
-- REQUEUE_RUN and EXPIRE_LEASE) declare seven keys right before the counters: the run's own
-- children set, the partition's orphans, its parent's hash, events, steps and children set
-- (the run's own keys when it has no parent: they are told apart by the parent's run_id),
-- and the partition's timers. A child lives in its parent's partition, so all of it is one
-- slot.
--
-- A run that ended: when it is a child of a run that has not ended, its parent's step that
-- started it records how it ended (status, and the result or the error), CHILD_ENDED is
-- written to the parent, and a parent that waits for this child is made due to wake (its
-- timer set to now: WAKE_RUN requeues it). When it has children that have not ended, it is
-- noted in the orphans zset: the control plane cancels those children (`_children`).
-- The fields of a child's hash `child_end` reads.
local CHILD_FIELDS = {'run_id', 'parent_run_id', 'parent_step', 'status', 'result_json',
  'error_type', 'error_message', 'error_component', 'workflow', 'cancel_reason'}
-- Record in its parent (hash `prun`, events `pevents`, steps `psteps`) how the child `c` (its
-- CHILD_FIELDS, or nil when its record is gone: `id` and `step` then say which) ended: its
-- step's checkpoint and CHILD_ENDED. Only while the parent has not ended, and only over the
-- step's start, so a second call changes nothing. True when it recorded.
local function child_end(prun, pevents, psteps, c, id, step)
  local p = redis.call('HMGET', prun, 'run_id', 'status', 'attempt')
  if p[2] ~= 'QUEUED' and p[2] ~= 'RUNNING' and p[2] ~= 'WAITING' then return false end
  local head = '{"child":"' .. id .. '"'
  local started = redis.call('HGET', psteps, step)
  if not started or string.sub(started, 1, #head) ~= head then return false end
  local workflow = c and c[9] or (cjson.decode(started).workflow or '')
  local status = c and c[4] or 'FAILED'
  local data = {child = id, workflow = workflow, step = step, status = status}
  local outcome
  if status == 'SUCCEEDED' then
    local result = (c[5] and c[5] ~= '') and c[5] or 'null'
    outcome = '{"status":"SUCCEEDED","child":"' .. id .. '","workflow":' ..
      cjson.encode(workflow) .. ',"result":' .. result .. '}'
  else
    local err
    if not c then
      err = {type = 'ChildLost', message = 'child run ' .. id .. ' is gone (its record ' ..
        'expired or was removed) and its end was never recorded', component = ''}
    elseif status == 'CANCELLED' then
      err = {type = 'Cancelled', message = c[10] or '', component = ''}
    else
      err = {type = c[6] or '', message = c[7] or '', component = c[8] or ''}
    end
    data.error = err
    outcome = '{"status":"' .. status .. '","child":"' .. id .. '","workflow":' ..
      cjson.encode(workflow) .. ',"error":' .. cjson.encode(err) .. '}'
  end
  redis.call('HSET', psteps, step, outcome)
  local eid = emit(pevents, {'t', 'CHILD_ENDED', 'a', p[3],
    'm', 'child run ' .. id .. ' (' .. workflow .. ') ended ' .. status,
    'd', cjson.encode(data)})
  redis.call('HSET', prun, 'last_event_id', eid)
  return true
end
local function ended(run)
  local own, orphans = KEYS[#KEYS - 10], KEYS[#KEYS - 9]
  local prun, pevents, psteps = KEYS[#KEYS - 8], KEYS[#KEYS - 7], KEYS[#KEYS - 6]
  local pchildren, timers = KEYS[#KEYS - 5], KEYS[#KEYS - 4]
  local c = redis.call('HMGET', run, unpack(CHILD_FIELDS))
  if redis.call('SCARD', own) > 0 then redis.call('ZADD', orphans, now_ms(), c[1]) end
  if not c[2] or c[2] == '' then return end
  redis.call('SREM', pchildren, c[1])
  -- Not the caller's declared parent (it declared none), or the parent is gone.
  if redis.call('HGET', prun, 'run_id') ~= c[2] then return end
  if not child_end(prun, pevents, psteps, c, c[1], c[3]) then return end
  local p = redis.call('HMGET', prun, 'status', 'wait_kind', 'wait_children', 'run_id')
  if p[1] == 'WAITING' and p[2] == 'child' and
    string.find(' ' .. (p[3] or '') .. ' ', ' ' .. c[1] .. ' ', 1, true) then
    local now = fmt(now_ms())
    redis.call('HSET', prun, 'wake_ms', now)
    redis.call('ZADD', timers, now, p[4])
  end
end
-- A run that ended (see `ended`) keeps its keys for its retention (set when it was created;
-- 0 = forever), then they expire together: its hash, events, checkpoints, waits, children
-- and idempotency key. The caller declares the idempotency key it read from the run's hash
-- (`idem`, the run's own key when it has none); only the key the hash names is touched.
local function retire(run, events, steps, idem, waits)
  ended(run)
  local r = redis.call('HMGET', run, 'retention_ms', 'idem_key')
  local ms = tonumber(r[1] or '0') or 0
  if ms <= 0 then return end
  redis.call('PEXPIRE', run, ms)
  redis.call('PEXPIRE', events, ms)
  redis.call('PEXPIRE', steps, ms)
  redis.call('PEXPIRE', waits, ms)
  redis.call('PEXPIRE', KEYS[#KEYS - 10], ms)
  if r[2] and r[2] ~= '' and r[2] == idem then redis.call('PEXPIRE', idem, ms) end
end
-- 0: not held; 1: apply; 2: already applied (a retried write)
local function fenced(run, attempt, seq)
  if not holds(run, attempt) then return 0 end
  local last = tonumber(redis.call('HGET', run, 'seq') or '0')
  if tonumber(seq) <= last then return 2 end
  redis.call('HSET', run, 'seq', seq)
  return 1
end
"""

# Every script's last four KEYS are the partition's counters (keys.stats_keys): tenants,
# builds, status, queued. Every key a script touches is in its KEYS, all in the partition of
# the run (one slot); channels are ARGV (they are not keys).

# KEYS: run, events, idempotency (the run key when there is none), tenant's index, workflow
# index, queue. ARGV: run_id, workflow, input_json, labels_json, idempotency key ('' = none),
# traceparent, tenant, the run's retention after it ends (ms, 0 = forever), the partition's
# work channel.
# Returns {1, run_id, the run's hash as a flat list} created; {0, earlier run_id} on an
# idempotency key seen before (a StartRun racing with another on the same key finds its run).
# The tenant's limits and the workflow's existence are checked by the caller before
# (`Runs.create`); they live in other slots.
CREATE_RUN = (
    _PRELUDE
    + """
local idem = ''
if ARGV[5] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[3], ARGV[1])
  idem = KEYS[3]
end
local now = fmt(now_ms())
local id = emit(KEYS[2], {'t', 'RUN_QUEUED', 'a', '1', 'm', 'queued'})
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'workflow', ARGV[2], 'status', 'QUEUED',
  'attempt', '1', 'input_json', ARGV[3], 'labels_json', ARGV[4], 'idempotency_key', ARGV[5],
  'create_ms', now, 'update_ms', now, 'last_event_id', id, 'lost', '0', 'traceparent', ARGV[6],
  'tenant', ARGV[7], 'retention_ms', ARGV[8], 'idem_key', idem)
moved(KEYS[1], nil, 'QUEUED')
count(QUEUED, ARGV[2], 1)
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZADD', KEYS[5], now, ARGV[1])
enqueue(KEYS[6], ARGV[9], ARGV[1], '1')
return {1, ARGV[1], redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: the tenant's rate bucket. ARGV: its StartRun rate per second, its burst.
# Takes one token: returns 0, or the ms to wait for one (nothing taken).
TAKE_START_TOKEN = (
    _PRELUDE
    + """
local rate = tonumber(ARGV[1]) / 1000
local burst = tonumber(ARGV[2])
local now = now_ms()
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens = math.min(burst, tonumber(bucket[1] or burst) +
  (now - tonumber(bucket[2] or now)) * rate)
if tokens < 1 then return math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens - 1), 'ms', fmt(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return 0
"""
)

# KEYS: a partition's notice channel (keys.work_channel). ARGV: the message (a queue's key).
# Publishes it the way the scripts do (sharded on Redis 7+): a queue entry handed back.
NOTIFY = (
    _PRELUDE
    + """
publish(KEYS[1], ARGV[1])
return 1
"""
)

# KEYS: run, leases, events, the partition's current builds (keys.builds_current_key), steps.
# ARGV: attempt, worker_id, replica_id, lease_ms, max_attempts, the worker's build id, the
# attempt's span id ('' = the worker writes RUN_STARTED itself: a worker of protocol 0).
# Returns {1, workflow, input_json, traceparent, labels_json, idem_key, parent_run_id, tenant,
# the number of step checkpoints, the span id of the RUN_STARTED it wrote ('' = none)} when
# this caller now holds the attempt,
# {-1, current build} when the run has not started on any build yet and another build is
# current (new runs go to the current build only), else {0}.
# The run is pinned to the worker's build from here on; a run that moves to another build
# (by policy, its own has no worker left) says so in a STATUS event.
# The same claim again (this attempt, this worker, which has written nothing for it yet) is
# claimed again, its lease started anew: a dispatcher whose reply was lost cannot tell
# whether its claim landed, and sends it again rather than drop the run.
# With a span id, the claim writes the attempt's RUN_STARTED (data: worker, build, and the
# step checkpoints it resumes after, child runs' starts left out), once: the worker then
# reads nothing before its first write, and a watcher sees the start a round trip sooner.
CLAIM_STARTS_UP_TO = 256  # step checkpoints at most for the claim to write RUN_STARTED
CLAIM_RUN = (
    _PRELUDE
    + f"local CLAIM_STARTS_UP_TO = {CLAIM_STARTS_UP_TO}\n"
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'workflow', 'input_json', 'run_id',
  'traceparent', 'build', 'worker_id', 'seq', 'labels_json', 'idem_key', 'parent_run_id',
  'tenant', 'attempt_span')
-- attempt_span is '<holder> <span>' (the holder the claim wrote RUN_STARTED for), or ''.
local mine = ARGV[1] .. '@' .. ARGV[2] .. ' '
local function claimed()
  local span = ''
  if string.sub(st[14] or '', 1, #mine) == mine then span = string.sub(st[14], #mine + 1) end
  return {1, st[3], st[4], st[6] or '', st[10] or '', st[11] or '', st[12] or '',
    st[13] or '', redis.call('HLEN', KEYS[5]), span}
end
if st[1] == 'RUNNING' and st[2] == ARGV[1] and st[8] == ARGV[2] and (st[9] or '0') == '0'
  and (st[7] or '') == ARGV[6] then
  local again = fmt(now_ms() + tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], 'lease_expires_ms', again)
  redis.call('ZADD', KEYS[2], again, st[5])
  return claimed()
end
if st[1] ~= 'QUEUED' or st[2] ~= ARGV[1] then return {0} end
local pinned = st[7] or ''
if pinned == '' then
  local current = redis.call('HGET', KEYS[4], st[3])
  if current and current ~= '' and current ~= ARGV[6] then return {-1, current} end
end
local now = now_ms()
local expires = fmt(now + tonumber(ARGV[4]))
-- A run resumed after many steps: its worker writes RUN_STARTED (listing them) as before,
-- so that a claim never scans a large hash nor writes a large event.
local span = ARGV[7]
local total = redis.call('HLEN', KEYS[5])
if total > CLAIM_STARTS_UP_TO then span = '' end
moved(KEYS[1], 'QUEUED', nil)
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'worker_id', ARGV[2], 'replica_id', ARGV[3],
  'lease_expires_ms', expires, 'update_ms', fmt(now), 'max_attempts', ARGV[5], 'seq', '0',
  'build', ARGV[6], 'attempt_span', span ~= '' and (mine .. span) or '')
st[14] = span ~= '' and (mine .. span) or ''
moved(KEYS[1], nil, 'RUNNING')
redis.call('ZADD', KEYS[2], expires, st[5])
count(QUEUED, st[3], -1)
if pinned ~= '' and pinned ~= ARGV[6] then
  local to = ARGV[6] ~= '' and ('build ' .. ARGV[6]) or 'a worker without a build id'
  local id = emit(KEYS[3], {'t', 'STATUS', 'a', ARGV[1],
    'm', 'moved from build ' .. pinned .. ' to ' .. to .. ': no worker of build ' .. pinned ..
    ' is left to run it'})
  redis.call('HSET', KEYS[1], 'last_event_id', id)
end
if span ~= '' then
  local steps = {}
  for _, step in ipairs(redis.call('HKEYS', KEYS[5])) do
    -- ctx.run_child's '@child#n' and ctx.map's '@map#n/i' are child runs' starts: their
    -- CHILD_STARTED events show them (as sdk._context.is_child_step tells them apart).
    local last = string.match(step, '([^/]*)$')
    local before = string.match(step, '([^/]*)/[^/]*$')
    if not (string.sub(last, 1, 6) == '@child' or
      (before and string.sub(before, 1, 5) == '@map#' and string.match(last, '^%d+$'))) then
      steps[#steps + 1] = step
    end
  end
  table.sort(steps)
  local resumed = total > 0 and (', resuming after ' .. total .. ' finished steps') or ''
  local data = '{"worker":' .. cjson.encode(ARGV[2]) .. ',"build":' .. cjson.encode(ARGV[6]) ..
    ',"checkpoints":' .. (#steps > 0 and cjson.encode(steps) or '[]') .. '}'
  local id = emit(KEYS[3], {'t', 'RUN_STARTED', 'a', ARGV[1],
    'm', 'attempt ' .. ARGV[1] .. ' started on worker ' .. ARGV[2] .. resumed,
    'd', data, 's', span})
  redis.call('HSET', KEYS[1], 'last_event_id', id)
end
return claimed()
"""
)

# The events a worker may append; every other type (queued, retrying, the terminal ones) is
# written only by the lifecycle scripts. RUN_STARTED only as an attempt's first write.
WORKER_EVENTS: tuple[str, ...] = (EventType.RUN_STARTED, *EMITTABLE)

# KEYS: run, events, steps. ARGV: holder ("attempt@worker_id"), seq, step key ('' = none),
# step value, n, then per
# event: field count, field, value, ... (the type first: 't', type). Returns the new event ids
# ({} for a write already applied), or nil when the attempt no longer holds the run; an error
# reply (EVENTTYPE) for an event of a type a worker may not write, before anything is written.
APPEND_EVENTS = (
    _PRELUDE
    + """
local allowed = """
    + _lua_set(WORKER_EVENTS)
    + """
local names = """
    + _lua_set(FIELD_NAMES)
    + """
local j = 6
for _ = 1, tonumber(ARGV[5]) do
  local t = ARGV[j + 2]
  -- RUN_STARTED: as the attempt's first write, and only where the claim did not write it
  -- for this very holder (attempt_span: '<holder> <span>'; a holder that no longer holds the
  -- run is refused below, as every write of it is).
  local mine = ARGV[1] .. ' '
  if ARGV[j + 1] ~= 't' or not allowed[t] or (t == 'RUN_STARTED' and (ARGV[2] ~= '1' or
    (string.sub(redis.call('HGET', KEYS[1], 'attempt_span') or '', 1, #mine) == mine and
      holds(KEYS[1], ARGV[1])))) then
    return redis.error_reply('EVENTTYPE a worker may not write a ' .. tostring(t) .. ' event')
  end
  -- Each field once, and only fields of the event codec: a second 't' would be read last.
  local n = tonumber(ARGV[j])
  if n % 2 ~= 0 then return redis.error_reply('EVENTTYPE an event has an odd field list') end
  local seen = {}
  for k = j + 1, j + n, 2 do
    if not names[ARGV[k]] or seen[ARGV[k]] then
      return redis.error_reply('EVENTTYPE an event field ' .. tostring(ARGV[k]) ..
        ' that is repeated or not one of """
    + " ".join(FIELD_NAMES)
    + """')
    end
    seen[ARGV[k]] = true
  end
  j = j + n + 1
end
local state = fenced(KEYS[1], ARGV[1], ARGV[2])
if state == 0 then return false end
if state == 2 then return {} end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[3], ARGV[4]) end
local ids = {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local n = tonumber(ARGV[i])
  ids[#ids + 1] = emit(KEYS[2], {unpack(ARGV, i + 1, i + n)})
  i = i + n + 1
end
if #ids > 0 then redis.call('HSET', KEYS[1], 'last_event_id', ids[#ids]) end
return ids
"""
)

# KEYS: run, events, leases, steps, idempotency (as the run's hash names it; the run key when
# it has none), waits, the family's seven (keys.family_keys). ARGV: holder, seq, status,
# result_json, error_type,
# error_message, error_component, then the terminal event's fields.
# Returns the event id ('' for a write already applied) or nil.
FINISH_RUN = (
    _PRELUDE
    + """
if ARGV[3] ~= 'SUCCEEDED' and ARGV[3] ~= 'FAILED' then
  return redis.error_reply('EVENTTYPE a worker may end a run only SUCCEEDED or FAILED')
end
if #ARGV % 2 ~= 1 then
  return redis.error_reply('EVENTTYPE the terminal event has an odd field list')
end
local names = """
    + _lua_set(FIELD_NAMES[1:])
    + """
local seen = {}
for k = 10, #ARGV, 2 do
  if seen[ARGV[k]] or not names[ARGV[k]] then
    return redis.error_reply('EVENTTYPE an event field ' .. tostring(ARGV[k]) ..
      ' that is repeated or not one of """
    + " ".join(FIELD_NAMES[1:])
    + """')
  end
  seen[ARGV[k]] = true
end
local state = fenced(KEYS[1], ARGV[1], ARGV[2])
if state == 0 then return false end
if state == 2 then return '' end
local id = emit(KEYS[2], {'t', 'RUN_' .. ARGV[3], unpack(ARGV, 10)})
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result_json', ARGV[4], 'error_type', ARGV[5],
  'error_message', ARGV[6], 'error_component', ARGV[7], 'update_ms', fmt(now_ms()),
  'last_event_id', id, 'lease_expires_ms', '')
redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'run_id'))
moved(KEYS[1], 'RUNNING', ARGV[3])
retire(KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6])
return id
"""
)

# KEYS: run, events, leases, steps, idempotency (as for FINISH_RUN), waits, timers, the
# family's seven (keys.family_keys). ARGV: reason. A QUEUED, RUNNING or WAITING run can be
# cancelled (a WAITING one at once: no worker holds it, and its timer is removed).
# Returns {-1} unknown run, {0, status} already finished, {1, previous status, attempt, worker}.
CANCEL_RUN = (
    _PRELUDE
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker_id', 'run_id', 'workflow')
if not st[1] then return {-1} end
if st[1] ~= 'QUEUED' and st[1] ~= 'RUNNING' and st[1] ~= 'WAITING' then return {0, st[1]} end
local id = emit(KEYS[2], {'t', 'RUN_CANCELLED', 'a', st[2], 'm', ARGV[1]})
redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'cancel_reason', ARGV[1],
  'update_ms', fmt(now_ms()), 'last_event_id', id, 'lease_expires_ms', '', 'wake_ms', '')
redis.call('ZREM', KEYS[3], st[4])
redis.call('ZREM', KEYS[7], st[4])
moved(KEYS[1], st[1], 'CANCELLED')
if st[1] == 'QUEUED' then count(QUEUED, st[5], -1) end
retire(KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6])
return {1, st[1], st[2], st[3] or ''}
"""
)

# KEYS: run, leases. ARGV: holder ("attempt@worker_id"), lease_ms. Returns 1 while it holds
# the run, else 0.
HEARTBEAT = (
    _PRELUDE
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
local expires = fmt(now_ms() + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'lease_expires_ms', expires)
redis.call('ZADD', KEYS[2], expires, redis.call('HGET', KEYS[1], 'run_id'))
return 1
"""
)

_local_requeue = """
-- The attempt goes back to `queue`: the caller read the run's build and declared that
-- build's queue (keys.queue_key(n, workflow, build); the workflow's own when it has none).
local function requeue(run, events, queue, leases, attempt, message, channel)
  local next_attempt = tostring(tonumber(attempt) + 1)
  local r = redis.call('HMGET', run, 'run_id', 'workflow', 'build')
  local id = emit(events, {'t', 'RUN_RETRYING', 'a', next_attempt, 'm', message})
  moved(run, 'RUNNING', nil)
  redis.call('HSET', run, 'status', 'QUEUED', 'attempt', next_attempt, 'worker_id', '',
    'update_ms', fmt(now_ms()), 'last_event_id', id, 'lease_expires_ms', '', 'seq', '0',
    'attempt_span', '')
  moved(run, nil, 'QUEUED')
  redis.call('ZREM', leases, r[1])
  enqueue(queue, channel, r[1], next_attempt)
  count(QUEUED, r[2], 1)
end
-- Whether the run's build is the one the caller read (and declared the queue of).
local function built(run, build)
  return (redis.call('HGET', run, 'build') or '') == build
end
-- The run's last allowed attempt was lost: it ends FAILED (AttemptsExhausted) saying why.
local function give_up(run, events, leases, steps, idem, waits, attempt, lost, limit, why)
  local message = 'gave up after ' .. lost .. ' lost attempts (max_attempts ' .. limit ..
    '): ' .. why
  local data = cjson.encode({type = 'AttemptsExhausted', message = message, component = '',
    attempt = tonumber(attempt)})
  local id = emit(events, {'t', 'RUN_FAILED', 'a', attempt,
    'm', 'AttemptsExhausted: ' .. message, 'd', data})
  redis.call('HSET', run, 'status', 'FAILED', 'error_type', 'AttemptsExhausted',
    'error_message', message, 'error_component', '', 'update_ms', fmt(now_ms()),
    'last_event_id', id, 'lease_expires_ms', '')
  redis.call('ZREM', leases, redis.call('HGET', run, 'run_id'))
  moved(run, 'RUNNING', 'FAILED')
  retire(run, events, steps, idem, waits)
end
"""

# KEYS: run, events, queue (of the run's build, as the caller read it), leases, steps,
# idempotency (as for FINISH_RUN), waits, the family's seven (keys.family_keys). ARGV: holder
# ("attempt@worker_id"), reason, mode, the
# run's build as the caller read it, the partition's work channel.
# Puts a held attempt back in the queue as the next attempt at once; it does not count as a
# lost attempt. Modes:
# - '' : a worker that drains gives it back.
# - 'untouched': the control plane takes back an assignment the worker never acknowledged,
#   only while the worker has written nothing for it (once it wrote, it has the run and its
#   lease covers it).
# - 'stopped': a worker gives back a run it stopped because it could not renew its lease.
# The last two are free three times per run; after that each counts as a lost attempt (and
# the last allowed one fails the run), so a run cannot bounce between workers for ever.
# Returns 1 requeued, 0 not held, 2 not taken back (the worker has written for it), 3 failed,
# 4 the run's build is not the one the caller read (read again and retry).
REQUEUE_RUN = (
    _PRELUDE
    + _local_requeue
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
if not built(KEYS[1], ARGV[4]) then return 4 end
local attempt = string.match(ARGV[1], '^%d+')
if ARGV[3] == 'untouched' or ARGV[3] == 'stopped' then
  if ARGV[3] == 'untouched' and tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') > 0 then
    return 2
  end
  if redis.call('HINCRBY', KEYS[1], 'takebacks', 1) > 3 then
    local lost = redis.call('HINCRBY', KEYS[1], 'lost', 1)
    local limit = tonumber(redis.call('HGET', KEYS[1], 'max_attempts') or '3')
    if lost >= limit then
      give_up(KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7], attempt, lost, limit,
        'it was taken back or given back more than three times: ' .. ARGV[2])
      return 3
    end
  end
end
requeue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], attempt, ARGV[2], ARGV[5])
return 1
"""
)

# KEYS: as for REQUEUE_RUN. ARGV: run_id, lease timeout (s, for the message), the run's build
# as the caller read it, the partition's work channel.
# Acts only on a RUNNING run whose lease really expired, so of several replicas racing on
# one expiry exactly one acts. Returns 'requeued', 'failed', '' (nothing to do), or 'stale'
# when the run's build is not the one the caller read (read again and retry).
EXPIRE_LEASE = (
    _PRELUDE
    + _local_requeue
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'lease_expires_ms', 'worker_id',
  'max_attempts', 'lost')
if st[1] ~= 'RUNNING' or not st[3] or st[3] == '' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return ''
end
local now = now_ms()
if tonumber(st[3]) > now then
  redis.call('ZADD', KEYS[4], st[3], ARGV[1])
  return ''
end
if not built(KEYS[1], ARGV[3]) then return 'stale' end
local lost = tonumber(st[6] or '0') + 1
local limit = tonumber(st[5] or '3')
local why = 'worker ' .. (st[4] or '?') .. ' stopped renewing the lease of attempt ' .. st[2] ..
  ' for ' .. ARGV[2] .. ' s (it crashed, hung or lost its network)'
redis.call('HSET', KEYS[1], 'lost', tostring(lost))
if lost >= limit then
  give_up(KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7], st[2], lost, limit, why)
  return 'failed'
end
requeue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], st[2], why .. '; retrying as attempt ' ..
  tostring(tonumber(st[2]) + 1), ARGV[4])
return 'requeued'
"""
)

_local_waits = """
-- Whether `holder` parked the run at `step` already (a write retried after a lost reply).
local function parked_by(run, holder, step)
  local st = redis.call('HMGET', run, 'status', 'parked_by', 'wait_step')
  return st[1] == 'WAITING' and st[2] == holder and st[3] == step
end
-- The attempt `holder` gives the run up to wait: no worker, no lease; a timer when `wake` is
-- a time (ms), '' for none. Parking is not a lost attempt.
local function park(run, events, leases, timers, holder, kind, name, step, wake, message,
    children)
  local r = redis.call('HMGET', run, 'run_id', 'attempt')
  local data = {kind = kind, name = name, step = step}
  if wake ~= '' then data.wake_ms = tonumber(wake) end
  if children then
    -- The event names the first 100 children (a map may wait for 1000); `waiting` counts all.
    data.waiting = #children
    data.children = {unpack(children, 1, math.min(#children, 100))}
  end
  local id = emit(events, {'t', 'RUN_WAITING', 'a', r[2], 'm', message,
    'd', cjson.encode(data)})
  moved(run, 'RUNNING', 'WAITING')
  redis.call('HSET', run, 'status', 'WAITING', 'worker_id', '', 'parked_by', holder,
    'wait_kind', kind, 'wait_name', name, 'wait_step', step, 'wake_ms', wake,
    'lease_expires_ms', '', 'update_ms', fmt(now_ms()), 'last_event_id', id,
    'wait_children', children and table.concat(children, ' ') or '')
  redis.call('ZREM', leases, r[1])
  if wake ~= '' then redis.call('ZADD', timers, wake, r[1]) end
end
-- A parked run goes back to `queue` (its build's, as the caller read it and declared) as its
-- next attempt, which replays its checkpoints; it does not count as a lost attempt.
local function resume(run, events, queue, timers, channel, message)
  local r = redis.call('HMGET', run, 'run_id', 'workflow', 'attempt')
  local next_attempt = tostring(tonumber(r[3]) + 1)
  local id = emit(events, {'t', 'RUN_QUEUED', 'a', next_attempt, 'm', message})
  moved(run, 'WAITING', nil)
  redis.call('HSET', run, 'status', 'QUEUED', 'attempt', next_attempt, 'worker_id', '',
    'parked_by', '', 'wait_kind', '', 'wait_name', '', 'wait_step', '', 'wake_ms', '',
    'wait_children', '', 'wait_steps', '',
    'update_ms', fmt(now_ms()), 'last_event_id', id, 'lease_expires_ms', '', 'seq', '0')
  moved(run, nil, 'QUEUED')
  redis.call('ZREM', timers, r[1])
  enqueue(queue, channel, r[1], next_attempt)
  count(QUEUED, r[2], 1)
end
"""

# KEYS: run, events, leases, timers, waits. ARGV: holder, seq, step key, the sleep's length
# (ms; '' when ARGV[5] is given), its end (ms, Redis time; ''), park after (ms).
# The sleep's end is recorded the first time (waits "t:<step>"), so a replay sleeps what is
# left of it. Returns {1, ms left} parked (the run is WAITING, its timer set), {0, ms left}
# to sleep in memory (0 or less: the sleep is over), nil when the attempt does not hold the
# run.
SLEEP_RUN = (
    _PRELUDE
    + _local_waits
    + """
if parked_by(KEYS[1], ARGV[1], ARGV[3]) then return {1, '0'} end
if fenced(KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local now = now_ms()
local field = 't:' .. ARGV[3]
local due = redis.call('HGET', KEYS[5], field)
if not due then
  due = ARGV[5] ~= '' and ARGV[5] or fmt(now + tonumber(ARGV[4]))
  redis.call('HSET', KEYS[5], field, due)
end
local left = tonumber(due) - now
if left <= tonumber(ARGV[6]) then return {0, fmt(left)} end
park(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], 'sleep', '', ARGV[3], due,
  string.format('sleeping for %.1f s', left / 1000))
return {1, fmt(left)}
"""
)

# KEYS: run, events, leases, timers, waits, steps. ARGV: holder, seq, name, step key, the
# request (JSON: name, prompt, schema, timeout_seconds), timeout (ms; '' none), the payload
# the worker checked and takes (''), the payload it refused ('') and why, '1' when the
# request has a schema, '1' to park ('0': answer {4} instead, having written the request).
# The first call writes the request and INPUT_REQUESTED. Returns:
#   {0, payload} the input is there (checkpointed under the step key): go on with it;
#   {1} parked until it comes (or its timeout);
#   {2, payload} it came before the request and has not been checked against the schema:
#       check it, and call again with it as taken or refused;
#   {3} the request timed out (checkpointed): raise InputTimeout;
#   {4} it would park, and was asked not to;
#   nil when the attempt does not hold the run.
REQUEST_INPUT = (
    _PRELUDE
    + _local_waits
    + """
if parked_by(KEYS[1], ARGV[1], ARGV[4]) then return {1} end
if fenced(KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local name, step, W = ARGV[3], ARGV[4], KEYS[5]
local attempt = redis.call('HGET', KEYS[1], 'attempt')
if redis.call('HEXISTS', W, 'x:' .. name) == 1 then
  redis.call('HSET', KEYS[6], step, '{"timeout":true}')
  return {3}
end
local now = now_ms()
local wake = redis.call('HGET', W, 'w:' .. name)
if not wake then
  wake = ARGV[6] ~= '' and fmt(now + tonumber(ARGV[6])) or ''
  redis.call('HSET', W, 'r:' .. name, ARGV[5], 'w:' .. name, wake)
  local id = emit(KEYS[2], {'t', 'INPUT_REQUESTED', 'a', attempt,
    'm', 'waiting for input ' .. name, 'd', ARGV[5]})
  redis.call('HSET', KEYS[1], 'last_event_id', id)
end
local value = redis.call('HGET', W, 'v:' .. name)
if value and redis.call('HEXISTS', W, 'u:' .. name) == 1 then
  if ARGV[10] ~= '1' or ARGV[7] == value then
    redis.call('HDEL', W, 'u:' .. name)
    redis.call('HINCRBY', W, 'early', -1)
  elseif ARGV[8] == value then
    redis.call('HDEL', W, 'u:' .. name, 'v:' .. name)
    redis.call('HINCRBY', W, 'early', -1)
    local id = emit(KEYS[2], {'t', 'STATUS', 'a', attempt, 'm', ARGV[9]})
    redis.call('HSET', KEYS[1], 'last_event_id', id)
    value = nil
  else
    return {2, value}
  end
end
if value then
  redis.call('HSET', KEYS[6], step, '{"payload":' .. value .. '}')
  return {0, value}
end
if wake ~= '' and tonumber(wake) <= now then
  redis.call('HSET', W, 'x:' .. name, '1')
  redis.call('HSET', KEYS[6], step, '{"timeout":true}')
  return {3}
end
if ARGV[11] ~= '1' then return {4} end
park(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], 'input', name, step, wake,
  'waiting for input ' .. name)
return {1}
"""
)

# KEYS: run, events, waits, steps, timers, queue (of the run's build, as the caller read it).
# ARGV: name, payload (canonical JSON), '1' when the caller checked it against the request it
# read ('0': it read none), the run's build as the caller read it, the partition's work
# channel, INPUT_RECEIVED's data (JSON), the most inputs nobody asked for the run may hold.
# Keeps the input, writes INPUT_RECEIVED, and when the run waits for it, checkpoints it and
# requeues the run. An input sent before the run asks is kept unchecked ("u:") and counted
# ("early"). Returns:
#   {1} kept (and delivered when the run waited for it); {2} the same payload came before;
#   {-1} no such run; {0, status} the run ended; {3} another payload came before;
#   {4} the request timed out (its time passed: the run is woken if it waited for it);
#   {5} the run's build is not the one read (read again);
#   {6} the run asked since the caller read (check against the request, and call again);
#   {7} too many inputs nobody asked for.
SEND_INPUT = (
    _PRELUDE
    + _local_waits
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'wait_kind', 'wait_name',
  'wait_step', 'build')
if not st[1] then return {-1} end
local name, W = ARGV[1], KEYS[3]
local value = redis.call('HGET', W, 'v:' .. name)
if value then return {value == ARGV[2] and 2 or 3} end
if redis.call('HEXISTS', W, 'x:' .. name) == 1 then return {4} end
if st[1] ~= 'QUEUED' and st[1] ~= 'RUNNING' and st[1] ~= 'WAITING' then return {0, st[1]} end
local asked = redis.call('HEXISTS', W, 'r:' .. name) == 1
if asked and ARGV[3] ~= '1' then return {6} end
local waking = st[1] == 'WAITING' and st[3] == 'input' and st[4] == name
if waking and (st[6] or '') ~= ARGV[4] then return {5} end
local due = redis.call('HGET', W, 'w:' .. name)
if asked and due and due ~= '' and tonumber(due) <= now_ms() then
  -- Its timeout passed and the monitor has not woken the run yet: too late, as after.
  redis.call('HSET', W, 'x:' .. name, '1')
  if waking then
    redis.call('HSET', KEYS[4], st[5], '{"timeout":true}')
    resume(KEYS[1], KEYS[2], KEYS[6], KEYS[5], ARGV[5], 'resumed: input ' .. name ..
      ' timed out')
  end
  return {4}
end
if not asked then
  if tonumber(redis.call('HGET', W, 'early') or '0') >= tonumber(ARGV[7]) then return {7} end
  redis.call('HINCRBY', W, 'early', 1)
  redis.call('HSET', W, 'u:' .. name, '1')
end
redis.call('HSET', W, 'v:' .. name, ARGV[2])
local id = emit(KEYS[2], {'t', 'INPUT_RECEIVED', 'a', st[2], 'm', 'input ' .. name ..
  ' received', 'd', ARGV[6]})
redis.call('HSET', KEYS[1], 'last_event_id', id)
if waking then
  redis.call('HSET', KEYS[4], st[5], '{"payload":' .. ARGV[2] .. '}')
  resume(KEYS[1], KEYS[2], KEYS[6], KEYS[5], ARGV[5], 'resumed: input ' .. name .. ' arrived')
end
return {1}
"""
)

# KEYS: run, events, queue (of the run's build, as the caller read it), timers, waits, steps,
# then (a run waiting for children) the hashes of the children it waits for, in the order of
# its wait_children. ARGV: run_id, the run's build as the caller read it, the partition's work
# channel, the check-up interval of a wait for children (ms).
# Wakes a WAITING run whose timer is due: a sleep is over (checkpointed as slept), an
# input timed out (checkpointed as such; a later input for it is refused), or a child run it
# waited for ended (made due by `ended`). Acts only on a
# run that waits and is due, so of several replicas racing on one timer exactly one acts.
# Returns 'woken', '' (nothing to do), or 'stale' when the run's build is not the one the
# caller read (read again and retry).
WAKE_RUN = (
    _PRELUDE
    + _local_waits
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'wake_ms', 'wait_kind', 'wait_name',
  'wait_step', 'build')
if st[1] ~= 'WAITING' or not st[2] or st[2] == '' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return ''
end
if tonumber(st[2]) > now_ms() then
  redis.call('ZADD', KEYS[4], st[2], ARGV[1])
  return ''
end
if (st[6] or '') ~= ARGV[2] then return 'stale' end
local message
if st[3] == 'input' then
  redis.call('HSET', KEYS[5], 'x:' .. st[4], '1')
  redis.call('HSET', KEYS[6], st[5], '{"timeout":true}')
  message = 'resumed: input ' .. st[4] .. ' timed out'
elseif st[3] == 'child' then
  -- A child it waits for ended, and `ended` recorded it. Or this is the check-up: a child
  -- whose end was never recorded here (KEYS[7..] are the children's hashes, as the caller
  -- read wait_children) is recorded now; with none, the check-up is set again.
  local ids = {}
  for id in string.gmatch(redis.call('HGET', KEYS[1], 'wait_children') or '', '%S+') do
    ids[#ids + 1] = id
  end
  local ok, steps = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'wait_steps') or '')
  -- Parked by a version that kept no steps (or kept them broken): woken as that version
  -- was, and its replay parks again the way this one does if nothing ended.
  local known = ok and type(steps) == 'table' and #steps == #ids
  local recorded, ended_now = not known, false
  if not known then steps = {} end
  for i, id in ipairs(known and ids or {}) do
    local v = redis.call('HGET', KEYS[6], steps[i] or '')
    if v and string.sub(v, 1, 10) == '{"status":' then
      recorded = true
    elseif 6 + i <= #KEYS - 4 and string.sub(KEYS[6 + i], -(#id + 5)) == ':run:' .. id then
      -- (its hash declared, as the caller read wait_children; the counters are the last four)
      local c = redis.call('HMGET', KEYS[6 + i], unpack(CHILD_FIELDS))
      if not c[1] then
        ended_now = child_end(KEYS[1], KEYS[2], KEYS[6], nil, id, steps[i] or '') or ended_now
      elseif c[1] == id and (c[4] == 'SUCCEEDED' or c[4] == 'FAILED' or c[4] == 'CANCELLED')
      then
        ended_now = child_end(KEYS[1], KEYS[2], KEYS[6], c, id, steps[i] or '') or ended_now
      end
    end
  end
  if not recorded and not ended_now then
    local again = fmt(now_ms() + tonumber(ARGV[4]))
    redis.call('HSET', KEYS[1], 'wake_ms', again)
    redis.call('ZADD', KEYS[4], again, ARGV[1])
    return ''
  end
  message = 'resumed: a child run ended'
else
  redis.call('HSET', KEYS[6], st[5], '{"slept":true}')
  message = 'resumed: the sleep is over'
end
resume(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], message)
return 'woken'
"""
)

# KEYS: the parent's run, events, steps and children set; the child's run, events, its
# tenant's index, its workflow's index, its queue (the workflow's own: a new run has no
# build); the partition's counters. ARGV: the parent's holder, seq, the step key that starts
# the child, the child's run id (new, in the parent's partition), workflow, input_json,
# labels_json, traceparent, '1' when detached, the child's span id in the parent's trace, the
# span it was started in, the partition's work channel, the most children a run may start,
# CHILD_STARTED's data (JSON).
# Starts the child once per step: the step's checkpoint ({"child": id, "workflow": name})
# is written with the child's creation, so a retried write or a later attempt of the parent
# finds the child it started. The child inherits the parent's tenant and retention. Returns
# {1, checkpoint} started; {0, checkpoint} started before; {2} the parent has started as many
# children as it may; nil when the attempt does not hold the parent.
START_CHILD = (
    _PRELUDE
    + """
if fenced(KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local existing = redis.call('HGET', KEYS[3], ARGV[3])
if existing then return {0, existing} end
local p = redis.call('HMGET', KEYS[1], 'run_id', 'tenant', 'retention_ms', 'attempt',
  'children')
if tonumber(p[5] or '0') >= tonumber(ARGV[13]) then return {2} end
local cid, workflow = ARGV[4], ARGV[5]
local now = fmt(now_ms())
local queued = emit(KEYS[6], {'t', 'RUN_QUEUED', 'a', '1', 'm', 'queued: a child of run ' .. p[1]})
redis.call('HSET', KEYS[5], 'run_id', cid, 'workflow', workflow, 'status', 'QUEUED',
  'attempt', '1', 'input_json', ARGV[6], 'labels_json', ARGV[7], 'idempotency_key', '',
  'create_ms', now, 'update_ms', now, 'last_event_id', queued, 'lost', '0',
  'traceparent', ARGV[8], 'tenant', p[2] or '', 'retention_ms', p[3] or '0', 'idem_key', '',
  'parent_run_id', p[1], 'parent_step', ARGV[3])
moved(KEYS[5], nil, 'QUEUED')
count(QUEUED, workflow, 1)
redis.call('ZADD', KEYS[7], now, cid)
redis.call('ZADD', KEYS[8], now, cid)
enqueue(KEYS[9], ARGV[12], cid, '1')
if ARGV[9] ~= '1' then redis.call('SADD', KEYS[4], cid) end
redis.call('HINCRBY', KEYS[1], 'children', 1)
local value = '{"child":"' .. cid .. '","workflow":' .. cjson.encode(workflow) .. '}'
redis.call('HSET', KEYS[3], ARGV[3], value)
local id = emit(KEYS[2], {'t', 'CHILD_STARTED', 'a', p[4],
  'm', 'started child run ' .. cid .. ' (' .. workflow .. ')', 'd', ARGV[14],
  's', ARGV[10], 'p', ARGV[11]})
redis.call('HSET', KEYS[1], 'last_event_id', id)
return {1, value}
"""
)

# KEYS: run, events, leases, timers, waits, steps. ARGV: holder, seq, the wait's step key
# (for a retried write), '1' to park ('0': answer {4} instead), n, then the step keys of the
# n children it waits for, then the check-up interval (ms).
# Answers {0, step, checkpoint, ...} with the children of those that ended (their steps
# hold how: `ended` wrote it), else parks the run until one of them ends ({1}), or, asked
# not to park, {4}; nil when the attempt does not hold the run. Checking and parking are one
# step, so a child that ends meanwhile is never missed.
WAIT_CHILDREN = (
    _PRELUDE
    + _local_waits
    + """
if parked_by(KEYS[1], ARGV[1], ARGV[3]) then return {1} end
if fenced(KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local done, ids, steps = {}, {}, {}
for i = 6, 5 + tonumber(ARGV[5]) do
  local v = redis.call('HGET', KEYS[6], ARGV[i])
  if v and string.sub(v, 1, 10) == '{"status":' then
    done[#done + 1] = ARGV[i]
    done[#done + 1] = v
  elseif v then
    ids[#ids + 1] = string.match(v, '^{"child":"(%x+)"')
    steps[#steps + 1] = ARGV[i]
  end
end
if #done > 0 then return {0, unpack(done)} end
if ARGV[4] ~= '1' then return {4} end
if #ids == 0 then return redis.error_reply('EVENTTYPE no child run was started to wait for') end
local what = #ids == 1 and ('child run ' .. ids[1]) or (#ids .. ' child runs')
park(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], 'child', '', ARGV[3], '',
  'waiting for ' .. what, ids)
-- A check-up timer: should a child's end never be recorded here (a worker of a version
-- before child runs ran it, or its record was lost), WAKE_RUN finds it ended and records it.
local check = fmt(now_ms() + tonumber(ARGV[#ARGV]))
redis.call('HSET', KEYS[1], 'wake_ms', check, 'wait_steps', cjson.encode(steps))
redis.call('ZADD', KEYS[4], check, redis.call('HGET', KEYS[1], 'run_id'))
return {1}
"""
)

# KEYS: the partition's orphans, the run's children set. ARGV: run_id.
# Drops the run from the orphans once none of its children is left to cancel: 1, else 0.
CLEAR_ORPHAN = """
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: the schedule, its tenant's ids, the due zset (keys.SCHEDULES_DUE), the version counter
# (keys.SCHEDULE_VERSIONS): all in {schedules}.
# ARGV: what ('create', 'update', 'pause', 'resume', 'delete'), the due member
# ("tenant\tschedule_id"), the schedule id, the spec (JSON), the next tick (ms, '' none),
# '1' paused (create), the note (pause), the most schedules a tenant may have.
# Returns {1, version} done; {0} it exists already (create); {-1} no such schedule; {2} the
# tenant has as many schedules as it may. Every change gives the schedule a new `version`
# from one counter (never one a deleted schedule of the same id had), so a tick computed from
# the schedule as it was is not applied over it (ADVANCE_SCHEDULE).
SAVE_SCHEDULE = """
local what, member = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local exists = redis.call('EXISTS', KEYS[1]) == 1
if what == 'create' then
  if exists then return {0} end
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[8]) then return {2} end
  local version = tostring(redis.call('INCR', KEYS[4]))
  redis.call('HSET', KEYS[1], 'schedule_id', ARGV[3], 'spec', ARGV[4], 'paused', ARGV[6],
    'note', '', 'next_ms', ARGV[5], 'last_tick_ms', '', 'last_run_id', '', 'started', '0',
    'skipped', '0', 'missed', '0', 'buffered_ms', '', 'last_error', '', 'create_ms', now,
    'update_ms', now, 'version', version)
  redis.call('ZADD', KEYS[2], 0, ARGV[3])
  if ARGV[6] ~= '1' and ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], ARGV[5], member) end
  return {1, version}
end
if not exists then return {-1} end
local version = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'version', tostring(version))
if what == 'delete' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], member)
  return {1, tostring(version)}
end
redis.call('HSET', KEYS[1], 'update_ms', now)
if what == 'update' then
  redis.call('HSET', KEYS[1], 'spec', ARGV[4], 'buffered_ms', '', 'last_error', '')
elseif what == 'pause' then
  redis.call('HSET', KEYS[1], 'paused', '1', 'note', ARGV[7], 'buffered_ms', '')
elseif what == 'resume' then
  redis.call('HSET', KEYS[1], 'paused', '0', 'note', '')
end
local paused = redis.call('HGET', KEYS[1], 'paused') == '1'
if paused or ARGV[5] == '' then
  redis.call('HSET', KEYS[1], 'next_ms', '')
  redis.call('ZREM', KEYS[3], member)
else
  redis.call('HSET', KEYS[1], 'next_ms', ARGV[5])
  redis.call('ZADD', KEYS[3], ARGV[5], member)
end
return {1, tostring(version)}
"""

# KEYS: the schedule, the due zset, the version counter. ARGV: the due member, the version the
# tick was computed
# from, the last tick handled (ms, '' keep), the last run started ('' keep), runs started,
# ticks skipped, ticks missed (counts to add), the next tick (ms, '' none), the tick
# buffered (ms, '' none), the last error ('' none), when to look again (ms, '' the next tick).
# Applies a scheduler's pass only over the very version it read: {1} applied, {0} the
# schedule changed meanwhile (or is gone): nothing written.
ADVANCE_SCHEDULE = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[2] then return {0} end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'last_tick_ms', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'last_run_id', ARGV[4]) end
redis.call('HINCRBY', KEYS[1], 'started', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'skipped', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'missed', ARGV[7])
redis.call('HSET', KEYS[1], 'next_ms', ARGV[8], 'buffered_ms', ARGV[9], 'last_error', ARGV[10],
  'version', tostring(redis.call('INCR', KEYS[3])))
local again = ARGV[11] ~= '' and ARGV[11] or ARGV[8]
if again ~= '' then
  redis.call('ZADD', KEYS[2], again, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return {1}
"""
