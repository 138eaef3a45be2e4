"""The Lua scripts of the Redis queue backend: every state change of a command, each one atomic.
Holds text only (`redis_queue.py` runs it); reads no clock but Redis's own.

Owns the Redis data layout (below) and the rules applied inside Redis: FIFO
order, the queue cap, exactly-once hand-out, expiry and orphan purges, shard
token checks, frame backlog, proc_affinity routing (the rules of affinity.py)
and replica liveness. Clocks are Redis's (`TIME`), so replicas with skewed
clocks still agree.

Layout, with B = `{prefix}:t:{tunnel_id}`:

    B:q            ZSET  request_id -> enqueue sequence       the FIFO of queued commands
    B:qdl          ZSET  request_id -> deadline (ms)          queued commands by deadline (purges)
    B:inflight     ZSET  request_id -> deadline (ms)          handed out, no terminal frame yet
    B:seq          STRING                                     sequence counter for B:q
    B:r:{rid}      HASH  cmd state token dl owner ch sid taker aff att off   one command; expires dl + keep
    B:f:{rid}      LIST  encoded frames for the caller        expires dl + keep
    B:take:{tok}   LIST  request ids one poll took            lets a retried take return the same batch
    B:seen         ZSET  gateway instance -> seen-until (ms)  `tunnel_client_not_seen`, affinity owners
    B:polls        ZSET  take token -> wait-until (ms)        polls waiting now: an enqueue publishes only then
    B:last         STRING last polling instance id
    B:s:{ch}:{sid} STRING owning instance of a proc_affinity session, with a TTL
    {prefix}:replicas     ZSET replica id -> alive-until (ms) heartbeats
    channels: {prefix}:wake:{tunnel_id} (something was queued), {prefix}:frames:{replica} (a frame for
    one of this replica's callers; the message is "request id, frame index, frame"). The list is the
    data: a lost message costs the caller a re-check, never the frame.

State of `B:r:{rid}`: queued -> in_flight -> final, or -> expired at the deadline; deleted by the
caller's discard, by the purge of a dead replica's commands, or by its TTL. `owner` is the replica
holding the waiting caller, `taker` the gateway instance that polled it, `token` a SHA-256 of the
shard token, `att` the last delivery attempt id (so a retried delivery is not applied twice), `off`
how many frames the caller has consumed.
"""

from __future__ import annotations

from typing import Final

_PRELUDE: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(set, member, now)
  local until_ = redis.call('ZSCORE', set, member)
  return until_ and tonumber(until_) > now
end
local function forget(base, rid)
  redis.call('ZREM', base .. ':q', rid)
  redis.call('ZREM', base .. ':qdl', rid)
  redis.call('ZREM', base .. ':inflight', rid)
  redis.call('DEL', base .. ':r:' .. rid, base .. ':f:' .. rid)
end
-- Past its deadline: out of the queue and the in-flight table, frames dropped; the record stays
-- (state 'expired', until its TTL) so the caller, whose own timeout fires about now, is not told
-- "lost" instead of "timed out".
local function expire(base, rid)
  redis.call('ZREM', base .. ':q', rid)
  redis.call('ZREM', base .. ':qdl', rid)
  redis.call('ZREM', base .. ':inflight', rid)
  redis.call('DEL', base .. ':f:' .. rid)
  if redis.call('EXISTS', base .. ':r:' .. rid) == 1 then
    redis.call('HSET', base .. ':r:' .. rid, 'state', 'expired')
  end
end
local function purge_late(base, now, budget)
  local n = 0
  for _, set in ipairs({':qdl', ':inflight'}) do
    local late = redis.call('ZRANGEBYSCORE', base .. set, '-inf', now, 'LIMIT', 0, budget)
    for _, rid in ipairs(late) do
      expire(base, rid)
      n = n + 1
    end
  end
  return n
end
local function split(csv)
  local set = {}
  for item in string.gmatch(csv, '[^,]+') do set[item] = true end
  return set
end
"""

ENQUEUE: Final = (
    _PRELUDE
    + """
-- ARGV: base replicas wake_channel rid blob token_hash timeout_ms replica channel sid
--       queue_max keep_ms replica_ttl_ms budget
-- -> 1 queued (or already queued by an earlier attempt), 0 queue full
local base, rid = ARGV[1], ARGV[4]
local rkey = base .. ':r:' .. rid
local now = now_ms()
-- the caller's replica is alive (renewed here only when its last renewal is not recent: replica_ttl_ms 0)
if ARGV[13] ~= '0' then redis.call('ZADD', ARGV[2], now + tonumber(ARGV[13]), ARGV[8]) end
if redis.call('EXISTS', rkey) == 1 then return 1 end
local q = base .. ':q'
local max = tonumber(ARGV[11])
if redis.call('ZCARD', q) >= max then
  purge_late(base, now, tonumber(ARGV[14]))
  if redis.call('ZCARD', q) >= max then return 0 end
end
local dl = now + tonumber(ARGV[7])
redis.call('HSET', rkey, 'cmd', ARGV[5], 'state', 'queued', 'token', ARGV[6], 'dl', dl,
  'owner', ARGV[8], 'ch', ARGV[9], 'sid', ARGV[10])
redis.call('PEXPIREAT', rkey, dl + tonumber(ARGV[12]))
redis.call('ZADD', q, redis.call('INCR', base .. ':seq'), rid)
redis.call('ZADD', base .. ':qdl', dl, rid)
-- wake polls only when one waits (a busy gateway's next take finds the command anyway)
if redis.call('ZCOUNT', base .. ':polls', '(' .. now, '+inf') > 0 then redis.call('PUBLISH', ARGV[3], rid) end
return 1
"""
)

TAKE: Final = (
    _PRELUDE
    + """
-- ARGV: base replicas instance limit channels_csv affine_csv scan session_ttl_ms token seen_ms wait_ms
-- -> flat list: rid, encoded command, remaining ms, rid, ...
-- An empty take marks its poll as waiting (B:polls, until its next re-take is overdue), so
-- enqueues publish a wake-up; a take that found something clears the mark.
local base, replicas, instance = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local seen = base .. ':seen'
redis.call('ZADD', seen, now + tonumber(ARGV[10]), instance)
redis.call('SET', base .. ':last', instance)
local memo = base .. ':take:' .. ARGV[9]
local out = {}
local prior = redis.call('LRANGE', memo, 0, -1)
if #prior > 0 then
  for _, rid in ipairs(prior) do
    local h = redis.call('HMGET', base .. ':r:' .. rid, 'state', 'dl', 'cmd', 'taker')
    if h[1] == 'in_flight' and h[4] == instance and tonumber(h[2]) > now then
      out[#out + 1] = rid
      out[#out + 1] = h[3]
      out[#out + 1] = tonumber(h[2]) - now
    end
  end
  return out
end
local limit = tonumber(ARGV[4])
local want = nil
if ARGV[5] ~= '' then want = split(ARGV[5]) end
local affine = split(ARGV[6])
local q = base .. ':q'
local taken = 0
local rids = {}
local owners = {}  -- replica -> alive, looked up once per take
for _, rid in ipairs(redis.call('ZRANGE', q, 0, tonumber(ARGV[7]) - 1)) do
  if taken >= limit then break end
  local rkey = base .. ':r:' .. rid
  local h = redis.call('HMGET', rkey, 'dl', 'owner', 'ch', 'sid', 'cmd')
  local up = false
  if h[1] then
    up = owners[h[2]]
    if up == nil then
      up = alive(replicas, h[2], now) or false
      owners[h[2]] = up
    end
  end
  if not up then
    forget(base, rid)
  elseif tonumber(h[1]) <= now then
    expire(base, rid)
  elseif want == nil or want[h[3]] then
    local ok = true
    if h[4] ~= '' then
      local skey = base .. ':s:' .. h[3] .. ':' .. h[4]
      local owner = redis.call('GET', skey)
      if owner then
        if owner ~= instance and alive(seen, owner, now) then
          ok = false
        else
          redis.call('SET', skey, instance, 'PX', ARGV[8])
        end
      end
    end
    if ok then
      redis.call('ZREM', q, rid)
      redis.call('ZREM', base .. ':qdl', rid)
      local aff = '0'
      if affine[h[3]] then aff = '1' end
      redis.call('HSET', rkey, 'state', 'in_flight', 'taker', instance, 'aff', aff)
      redis.call('ZADD', base .. ':inflight', h[1], rid)
      rids[#rids + 1] = rid
      out[#out + 1] = rid
      out[#out + 1] = h[5]
      out[#out + 1] = tonumber(h[1]) - now
      taken = taken + 1
    end
  end
end
if taken > 0 then
  redis.call('RPUSH', memo, unpack(rids))
  redis.call('PEXPIRE', memo, 120000)
  redis.call('ZREM', base .. ':polls', ARGV[9])
else
  redis.call('ZADD', base .. ':polls', now + tonumber(ARGV[11]), ARGV[9])
end
return out
"""
)

RELEASE: Final = """
-- ARGV: base token instance wake_channel
-- Put back what one poll took but never handed out (its poller left); -> how many.
local base = ARGV[1]
local memo = base .. ':take:' .. ARGV[2]
local rids = redis.call('LRANGE', memo, 0, -1)
local n = 0
for i = #rids, 1, -1 do
  local rid = rids[i]
  local rkey = base .. ':r:' .. rid
  local h = redis.call('HMGET', rkey, 'state', 'taker', 'dl')
  if h[1] == 'in_flight' and h[2] == ARGV[3] then
    local head = redis.call('ZRANGE', base .. ':q', 0, 0, 'WITHSCORES')
    local score = 0
    if #head > 0 then score = tonumber(head[2]) - 1 end
    redis.call('ZADD', base .. ':q', score, rid)
    redis.call('ZADD', base .. ':qdl', h[3], rid)
    redis.call('ZREM', base .. ':inflight', rid)
    redis.call('HSET', rkey, 'state', 'queued', 'taker', '', 'aff', '0')
    n = n + 1
  end
end
redis.call('DEL', memo)
if n > 0 then redis.call('PUBLISH', ARGV[4], 'released') end
return n
"""

DELIVER: Final = (
    _PRELUDE
    + """
-- ARGV: base replicas rid token_hash terminal blob backlog new_sid ends_session session_ttl_ms
--       attempt frames_channel_prefix keep_ms here
-- -> 'ok' (stored and published) | the frame's index (stored; the caller's replica is `here`, which
--    hands the frame over itself: no PUBLISH) | 'not_found' | 'mismatch' | 'backlog'
local base, rid = ARGV[1], ARGV[3]
local rkey = base .. ':r:' .. rid
local h = redis.call('HMGET', rkey, 'state', 'token', 'dl', 'owner', 'ch', 'sid', 'taker', 'aff', 'att', 'off')
if h[9] == ARGV[11] then return 'ok' end
local now = now_ms()
if h[1] ~= 'in_flight' or tonumber(h[3]) <= now or not alive(ARGV[2], h[4], now) then
  return 'not_found'
end
if h[2] ~= ARGV[4] then return 'mismatch' end
local fkey = base .. ':f:' .. rid
if ARGV[5] == '1' then
  redis.call('HSET', rkey, 'state', 'final', 'att', ARGV[11])
  redis.call('ZREM', base .. ':inflight', rid)
  if h[8] == '1' then
    if ARGV[9] == '1' then
      if h[6] ~= '' then redis.call('DEL', base .. ':s:' .. h[5] .. ':' .. h[6]) end
    else
      local sid = ARGV[8]
      if sid == '' then sid = h[6] end
      if sid ~= '' then
        local skey = base .. ':s:' .. h[5] .. ':' .. sid
        local current = redis.call('GET', skey)
        if not current or current == h[7] then redis.call('SET', skey, h[7], 'PX', ARGV[10]) end
      end
    end
  end
elseif redis.call('LLEN', fkey) >= tonumber(ARGV[7]) then
  return 'backlog'
else
  redis.call('HSET', rkey, 'att', ARGV[11])
end
-- the frame's absolute index: frames the caller consumed (trimmed) plus those still listed
local index = tonumber(h[10] or '0') + redis.call('RPUSH', fkey, ARGV[6]) - 1
redis.call('PEXPIREAT', fkey, tonumber(h[3]) + tonumber(ARGV[13]))
if h[4] == ARGV[14] then return index end
-- the wake-up carries the frame, so the caller's replica usually needs no read of its own
redis.call('PUBLISH', ARGV[12] .. h[4], rid .. ' ' .. index .. ' ' .. ARGV[6])
return 'ok'
"""
)

GONE: Final = 0
NOT_YET: Final = 1

NEXT_FRAME: Final = (
    _PRELUDE
    + """
-- ARGV: base rid consumed replicas replica replica_ttl_ms
-- (consumed = frames the caller already has: idempotent on retry)
-- -> the next encoded frame, 1 (none yet), or 0 (the command is gone)
-- A replica whose callers are waiting is alive: each of their checks renews its heartbeat.
redis.call('ZADD', ARGV[4], now_ms() + tonumber(ARGV[6]), ARGV[5])
local rkey = ARGV[1] .. ':r:' .. ARGV[2]
local fkey = ARGV[1] .. ':f:' .. ARGV[2]
if redis.call('EXISTS', rkey) == 0 then return 0 end
local off = tonumber(redis.call('HGET', rkey, 'off') or '0')
local consumed = tonumber(ARGV[3])
if consumed > off then
  redis.call('LTRIM', fkey, consumed - off, -1)
  redis.call('HSET', rkey, 'off', consumed)
end
return redis.call('LINDEX', fkey, 0) or 1
"""
)

FORGET: Final = (
    _PRELUDE
    + """
-- ARGV: base rid [base rid ...]   (finished calls are forgotten in batches)
for i = 1, #ARGV, 2 do forget(ARGV[i], ARGV[i + 1]) end
return 1
"""
)

FORGET_FINAL: Final = """
-- ARGV: base rid [base rid ...]   (answered calls: already out of the queue and the in-flight table, since
-- TAKE took them and DELIVER stored their terminal frame; only their record and frames are left)
local keys = {}
for i = 1, #ARGV, 2 do
  keys[#keys + 1] = ARGV[i] .. ':r:' .. ARGV[i + 1]
  keys[#keys + 1] = ARGV[i] .. ':f:' .. ARGV[i + 1]
end
return redis.call('DEL', unpack(keys))
"""

POLL_END: Final = (
    _PRELUDE
    + """
-- ARGV: base instance grace_ms token
local now = now_ms()
redis.call('ZADD', ARGV[1] .. ':seen', now + tonumber(ARGV[3]), ARGV[2])
redis.call('ZREM', ARGV[1] .. ':polls', ARGV[4])
redis.call('ZREMRANGEBYSCORE', ARGV[1] .. ':polls', '-inf', now)
return 1
"""
)

CLIENT_SEEN: Final = (
    _PRELUDE
    + """
-- ARGV: base -> ms until the last "seen until" (> 0: some instance is seen now), else 0
local last = redis.call('ZRANGE', ARGV[1] .. ':seen', -1, -1, 'WITHSCORES')
if #last == 0 then return 0 end
return math.max(0, tonumber(last[2]) - now_ms())
"""
)

STATUS: Final = (
    _PRELUDE
    + """
-- ARGV: base budget -> {seen instances, queued, in flight, last instance, oldest queued command or ''}
local base = ARGV[1]
local now = now_ms()
purge_late(base, now, tonumber(ARGV[2]))
local head = redis.call('ZRANGE', base .. ':q', 0, 0)
local oldest = ''
if #head > 0 then oldest = redis.call('HGET', base .. ':r:' .. head[1], 'cmd') or '' end
return {
  redis.call('ZCOUNT', base .. ':seen', '(' .. now, '+inf'),
  redis.call('ZCARD', base .. ':q'),
  redis.call('ZCARD', base .. ':inflight'),
  redis.call('GET', base .. ':last') or '',
  oldest,
}
"""
)

SESSION_OWNER: Final = """
-- ARGV: base channel sid -> owning instance or ''
return redis.call('GET', ARGV[1] .. ':s:' .. ARGV[2] .. ':' .. ARGV[3]) or ''
"""

HEARTBEAT: Final = (
    _PRELUDE
    + """
-- ARGV: replicas replica ttl_ms [base ...]; -> commands purged
-- Keep this replica alive; purge, per tunnel, commands past their deadline and commands whose
-- caller's replica died; drop gateway instances not seen for a day.
local now = now_ms()
redis.call('ZADD', ARGV[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('ZREMRANGEBYSCORE', ARGV[1], '-inf', now - 86400000)
local n = 0
for i = 4, #ARGV do
  local base = ARGV[i]
  n = n + purge_late(base, now, 1000)
  for _, set in ipairs({':q', ':inflight'}) do
    for _, rid in ipairs(redis.call('ZRANGE', base .. set, 0, 999)) do
      local owner = redis.call('HGET', base .. ':r:' .. rid, 'owner')
      if not owner or not alive(ARGV[1], owner, now) then
        forget(base, rid)
        n = n + 1
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', base .. ':seen', '-inf', now - 86400000)
  redis.call('ZREMRANGEBYSCORE', base .. ':polls', '-inf', now)
end
return n
"""
)

LEAVE: Final = """
-- ARGV: replicas replica   (a replica shutting down: its callers are gone)
return redis.call('ZREM', ARGV[1], ARGV[2])
"""
