"""The Lua scripts of the work queue (`talkingface.broker.queue`, whose docstring has the key
layout and the guarantees they keep) and of the job store (`talkingface.broker.jobs`). Each
runs as one atomic step on one Redis (not Redis Cluster: the scripts name keys they are not
given, such as the per-tenant lists and `tf:job:<id>`). The job store's create script adds
the job's first work message through the queue's `fair_push`, so a job is never created
without its work. The few-line scripts of the rate limits, the reconciler and the training
lock stay beside their code."""

from __future__ import annotations

WAKE_CAP = 16  # wake-up tokens kept for idle workers (each enqueue adds one)

LUA_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# The work queue's scripts.

# fair_push(queue name, tenant, job id, message JSON, at the front?): add a waiting message to
# the tenant's list, the tenant to the ring if its list was empty, the job to the backlog, and
# a wake-up token for an idle worker. Shared with the job store's create script.
FAIR_PUSH_LUA = f"""
local function fair_push(name, tenant, job_id, message, front)
  local list = 'tf:fair:' .. name .. ':t:' .. tenant
  local n = redis.call(front and 'LPUSH' or 'RPUSH', list, message)
  if n == 1 then redis.call('RPUSH', 'tf:fair:' .. name .. ':ring', tenant) end
  redis.call('RPUSH', 'tf:backlog:' .. name, job_id)
  redis.call('RPUSH', 'tf:wake:' .. name, '1')
  redis.call('LTRIM', 'tf:wake:' .. name, -{WAKE_CAP}, -1)
end
"""

# KEYS: stream; ARGV: group, consumer, min idle ms. Takes over the first message whose lease
# expired, scanning the whole PEL; returns {id, fields, times delivered} or nil.
CLAIM_EXPIRED = """
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', 1)
  cursor = r[1]
  local entry = r[2][1]
  if entry then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    return {entry[1], entry[2], p[1][4]}
  end
until cursor == '0-0'
return false
"""

# KEYS: stream, delayed; ARGV: max messages, queue name. Moves due retries to the front of
# their tenant's list. Returns {moved, ms until the next is due or -1}.
PROMOTE = (
    LUA_NOW
    + FAIR_PUSH_LUA
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local ok, m = pcall(cjson.decode, member)
  if ok and type(m) == 'table' then
    local enqueued = m.enqueued or string.match(m['from'] or '', '^(%d+)') or ''
    local message = cjson.encode({job_id = m.job_id, payload = m.payload, prior = m.prior,
                                  enqueued = enqueued})
    fair_push(ARGV[2], m.tenant or '', m.job_id, message, true)
  else  -- not ours to read: the stream's reader dead-letters it as malformed
    redis.call('XADD', KEYS[1], '*', 'job_id', '', 'payload', member, 'prior', '0')
  end
  redis.call('ZREM', KEYS[2], member)
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if next_due[2] then wait = math.max(0, tonumber(next_due[2]) - now) end
return {#due, wait}
"""
)

# KEYS: stream, delayed, ring; ARGV: max entries of each to read, queue name. Returns the age
# in ms of the oldest job among the stream's first entries (undelivered and pending: acked ones
# are deleted), the delayed set's and the heads of the tenants' lists, from its first enqueue
# (`enqueued`, else the id's time).
OLDEST_AGE = (
    LUA_NOW
    + """
local now = now_ms()
local oldest = now
local limit = tonumber(ARGV[1])
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', limit)) do
  local ms = tonumber(string.match(entry[1], '^(%d+)'))
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'enqueued' then ms = math.min(ms, tonumber(fields[i + 1]) or ms) end
  end
  if ms < oldest then oldest = ms end
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, limit - 1)) do
  local ok, m = pcall(cjson.decode, member)
  if ok and type(m) == 'table' then
    local ms = tonumber(m.enqueued) or tonumber(string.match(m['from'] or '', '^(%d+)'))
    if ms and ms < oldest then oldest = ms end
  end
end
for _, tenant in ipairs(redis.call('LRANGE', KEYS[3], 0, limit - 1)) do
  local head = redis.call('LINDEX', 'tf:fair:' .. ARGV[2] .. ':t:' .. tenant, 0)
  local ok, m = pcall(cjson.decode, head or '')
  if ok and type(m) == 'table' then
    local ms = tonumber(m.enqueued)
    if ms and ms < oldest then oldest = ms end
  end
end
return now - oldest
"""
)

# KEYS: stream, delayed; ARGV: group, consumer, message id, delay ms, delayed member.
RETRY = (
    LUA_NOW
    + """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: stream, dead; ARGV: group, message id, then the dead-letter entry's field/value pairs.
DEAD_LETTER = (
    LUA_NOW
    + """
redis.call('XADD', KEYS[2], '*', 'dead_at', now_ms(), unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: stream, ring, backlog; ARGV: group, consumer, queue name. Reads the oldest undelivered
# message of the stream (one added directly); else moves the first message of the ring's first
# tenant into the stream, rotates that tenant to the ring's end (or drops it when its list is
# empty) and reads the message. Returns {id, fields} or false when no tenant has work.
DISPATCH = """
local function read()
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1,
                       'STREAMS', KEYS[1], '>')
  if r and r[1] and r[1][2][1] then return r[1][2][1] end
  return false
end
local entry = read()
if entry then return entry end
while true do
  local tenant = redis.call('LPOP', KEYS[2])
  if not tenant then return false end
  local list = 'tf:fair:' .. ARGV[3] .. ':t:' .. tenant
  local raw = redis.call('LPOP', list)
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[2], tenant) end
  if raw then
    local ok, m = pcall(cjson.decode, raw)
    if ok and type(m) == 'table' and m.job_id then
      redis.call('LREM', KEYS[3], 1, m.job_id)
      redis.call('XADD', KEYS[1], '*', 'job_id', m.job_id, 'payload', m.payload or '',
                 'prior', m.prior or '0', 'enqueued', m.enqueued or '', 'tenant', tenant)
    else  -- the stream's reader dead-letters it as malformed
      redis.call('XADD', KEYS[1], '*', 'job_id', '', 'payload', raw, 'prior', '0')
    end
    return read()
  end
end
"""

# KEYS: ring, backlog; ARGV: queue name, tenant. Drops the tenant's waiting messages (a
# tenant purge); returns how many.
DROP_TENANT = """
local list = 'tf:fair:' .. ARGV[1] .. ':t:' .. ARGV[2]
local messages = redis.call('LRANGE', list, 0, -1)
for _, raw in ipairs(messages) do
  local ok, m = pcall(cjson.decode, raw)
  if ok and type(m) == 'table' and m.job_id then redis.call('LREM', KEYS[2], 1, m.job_id) end
end
redis.call('DEL', list)
redis.call('LREM', KEYS[1], 0, ARGV[2])
return #messages
"""

# KEYS: none; ARGV: queue name, tenant, job id, message JSON. `enqueue`.
ENQUEUE = (
    FAIR_PUSH_LUA
    + """
fair_push(ARGV[1], ARGV[2], ARGV[3], ARGV[4], false)
return 1
"""
)

# KEYS: stream; ARGV: group, consumer, message id. Resets the idle time if still ours.
EXTEND = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


# The job store's scripts.

# Shared by the job store's scripts: appending the record to its stream.
_PUBLISH = """
local function publish(job, events, ttl, maxlen)
  local flat = redis.call('HGETALL', job)
  local entry = {}
  for i = 1, #flat, 2 do
    if flat[i] ~= 'request' then
      entry[#entry + 1] = flat[i]
      entry[#entry + 1] = flat[i + 1]
    end
  end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(entry))
  redis.call('EXPIRE', events, ttl)
  return flat
end
"""

# KEYS: job, tenant index, events, sequence, the tenant's active set[, idempotency]; ARGV:
# ttl, maxlen, job_id, has idempotency key ('1' | '0'), work payload (JSON; '' = none), active
# limit (0 = none), work queue name ('' = none), tenant, field/value...
# Returns {1, job_id, record} for a new job, {0, existing_job_id} for a reused key, and
# {-1, active} when the tenant already has `active limit` jobs QUEUED or RUNNING.
# With a work queue, the job's first work message is added to the tenant's list of that queue
# in the same step (talkingface.broker.queue's fair_push and message format), so a job can
# never be created without its work.
# The active set holds the ids of the tenant's jobs that may still be active; ended or
# expired ones are pruned here (all of them when there is a limit, a sample otherwise), by
# reading `tf:job:<id>` keys the script is not given (one Redis, not Redis Cluster).
JOB_CREATE = (
    LUA_NOW
    + _PUBLISH
    + FAIR_PUSH_LUA
    + """
local ttl = tonumber(ARGV[1])
local active = KEYS[5]
local limit = tonumber(ARGV[6])
local idem = ARGV[4] == '1' and KEYS[6] or nil
local work = ARGV[7]
if idem then
  local existing = redis.call('GET', idem)
  if existing then return {0, existing} end
end
local members
if limit > 0 then
  members = redis.call('SMEMBERS', active)
else
  members = redis.call('SRANDMEMBER', active, 20)
end
local count = #members
for _, id in ipairs(members) do
  local s = redis.call('HGET', 'tf:job:' .. id, 'state')
  if not s or s == 'SUCCEEDED' or s == 'FAILED' or s == 'CANCELLED' then
    redis.call('SREM', active, id)
    count = count - 1
  end
end
if limit > 0 and count >= limit then return {-1, count} end
if idem then redis.call('SET', idem, ARGV[3], 'EX', ttl) end
redis.call('SADD', active, ARGV[3])
redis.call('EXPIRE', active, ttl)
local now = now_ms()
redis.call('HSET', KEYS[1], 'job_id', ARGV[3], 'created_at', now, 'updated_at', now,
           unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ttl)
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[2], 0, string.format('%015.0f:%015.0f:', now, seq) .. ARGV[3])
redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '(' .. string.format('%015.0f', now - 2 * ttl * 1000))
redis.call('EXPIRE', KEYS[2], ttl)
if work ~= '' then
  local message = cjson.encode({job_id = ARGV[3], payload = ARGV[5], prior = '0',
                                enqueued = string.format('%d', now)})
  fair_push(work, ARGV[8], ARGV[3], message, false)
end
return {1, ARGV[3], publish(KEYS[1], KEYS[3], ttl, ARGV[2])}
"""
)

# KEYS: job, events, webhook due set[, work stream]; ARGV: ttl, maxlen, tenant ('' = any), mode
# ('update' | 'cancel'), consumer group, message id, consumer ('' = no lease), field/value...
# (update). Returns {'OK', record} or {ERROR_NAME, detail...}.
# With a lease (a work stream, its group, the delivery's message id and consumer) the write
# happens only while that consumer still holds the message in the group's pending list, in
# the same atomic step (fencing), and renews it: a worker whose lease was taken over changes
# nothing, one that holds it needs no separate renewal.
# The write that makes a job with a callback_url final also schedules its webhook (due now).
JOB_UPDATE = (
    LUA_NOW
    + _PUBLISH
    + """
local ttl = tonumber(ARGV[1])
if ARGV[7] ~= '' then
  local ok, p = pcall(redis.call, 'XPENDING', KEYS[4], ARGV[5], ARGV[6], ARGV[6], 1)
  if not ok or not p[1] or p[1][2] ~= ARGV[7] then return {'LEASE_LOST'} end
  -- still ours: the write renews the lease too (idle time reset, delivery count unchanged)
  redis.call('XCLAIM', KEYS[4], ARGV[5], ARGV[7], 0, ARGV[6], 'JUSTID')
end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'JOB_NOT_FOUND'} end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[3] then
  return {'JOB_NOT_FOUND'}
end
if state == 'SUCCEEDED' or state == 'FAILED' or state == 'CANCELLED' then
  return {'JOB_ALREADY_FINISHED', state}
end
if ARGV[4] ~= 'cancel' and #ARGV < 8 then  -- no change (a fenced read): nothing published
  return {'OK', redis.call('HGETALL', KEYS[1])}
end
local allowed = {
  QUEUED = {QUEUED = true, RUNNING = true, CANCELLED = true, FAILED = true},
  RUNNING = {RUNNING = true, QUEUED = true, SUCCEEDED = true, FAILED = true, CANCELLED = true},
}
local changes = {}
if ARGV[4] == 'cancel' then
  changes = {'cancel_requested', '1'}
  if state == 'QUEUED' then changes = {'cancel_requested', '1', 'state', 'CANCELLED'} end
else
  for i = 8, #ARGV, 2 do
    if ARGV[i] == 'state' and not allowed[state][ARGV[i + 1]] then
      return {'ILLEGAL_TRANSITION', state, ARGV[i + 1]}
    end
    changes[#changes + 1] = ARGV[i]
    changes[#changes + 1] = ARGV[i + 1]
  end
end
local now = now_ms()
redis.call('HSET', KEYS[1], 'updated_at', now, unpack(changes))
redis.call('EXPIRE', KEYS[1], ttl)
local final = redis.call('HGET', KEYS[1], 'state')
if (final == 'SUCCEEDED' or final == 'FAILED' or final == 'CANCELLED')
    and (redis.call('HGET', KEYS[1], 'callback_url') or '') ~= '' then
  redis.call('HSET', KEYS[1], 'webhook_state', 'pending')
  redis.call('ZADD', KEYS[3], now, redis.call('HGET', KEYS[1], 'job_id'))
end
return {'OK', publish(KEYS[1], KEYS[2], ttl, ARGV[2])}
"""
)
