"""The Lua scripts of the protocol: each change of an event's state is one of them.

Redis runs a script atomically, so arrival, counting, the release decision, lease
renewal and key expiry happen as one step: no interleaving of participants can leave
a count without a lifetime or release a round twice (0.1.0 sent INCR, PUBLISH and
EXPIRE as separate commands).

State of one event (names in :mod:`pyprocsync.core.keys`), a hash with fields:

``g``
    the current generation (round); a released round moves it on by one.
``n``, ``k``
    arrivals in the current round, and how many it needs (set by its first arrival).
``f``
    arrival indices given back by withdrawn participants, space separated.
``t``
    when the current round's first counted arrival came, server milliseconds (set
    whenever an arrival makes ``n`` 1; read by ``pyprocsync status`` only).
``L``
    the slowest recent announcement, µs: how long participants took to learn of a
    release after it was decided (each reports its last one when it arrives); it sizes
    the lead of ``delay="auto"``, and every automatically led release lowers it by 1/32.
``m:<member>``
    the arrival index of each participant waiting in the current round (so an
    interrupted participant can withdraw even if it never read its index).
``a``
    while the complete round's action runs: the lease member of the participant
    running it (a Barrier's last arrival); the round is released by RELEASE.
``T``, ``W``, ``w``
    the current round's tolerance (the smallest ``max_uncertainty`` of its arrivals,
    µs; absent: none), its widest clock bound so far (µs; a bound not known counts as
    :data:`~pyprocsync.core.wire.UNBOUNDED_US`) and the lease member that reported it.
    An arrival that makes the widest bound exceed the tolerance breaks the round with
    reason ``uncertain`` (its list: ``[[member, "<bound µs>", "<tolerance µs>"]]``).
``o0`` .. ``o7``
    the outcomes of the last eight rounds (:data:`~pyprocsync.core.wire.OUTCOME_SLOTS`),
    slot ``generation % 8``:
    ``R <gen> <release µs> <lead µs>`` (released at that epoch instant of the last
    arriver's clock; followed by `` s`` when the instant is on the server's clock, in
    server-clock mode) or ``B <gen> <reason> <arrived> <expected> <missing JSON>``
    (broken). The current round is broken exactly when its slot holds its outcome.

plus a sorted set of the waiting participants' leases (member ``<12 hex>:<node id>``,
score: expiry in server milliseconds). A decided outcome is also published on the
event's channel; the published text is the stored text.

A :class:`~pyprocsync.Event` is a *flag*: one hash ``<prefix>:{<run id>:<name>}:flag``
with ``v`` (1 while set), ``s`` (how many times it was set) and ``o`` (the last set,
``S <sets> <release µs> <lead µs>``), announced on the channel of the same name.

Every script that writes gives both keys the retention lifetime, so no key ever lives
without a TTL. Each script's header names its ``KEYS``, ``ARGV`` (built by the request
of the same name in :mod:`pyprocsync.core.wire`) and reply. Replies that are strings
use the :class:`~pyprocsync.core.wire.Verdict` strings: ``UNDECIDED`` for "undecided",
``STATE_LOST`` for "the state of this round is gone" (server restarted or flushed, or
the keys expired) and ``EVICTED`` for "this round's outcome was already evicted from
the eight slots".

A script is not rolled back when one of its commands fails, so every script that
writes makes sure first that nothing it runs can be refused half way:

* before its first write, it asks the server's ACL (``redis.acl_check_cmd``, servers
  >= 7) whether this user may run each command it may run after it, on its key or
  channel; if not, it raises ``PYPROCSYNC-REFUSED``
  (:data:`~pyprocsync.core.wire.REFUSED_MARKER`) naming the command, having changed
  nothing (a refused first write changed nothing either, and the server records it in
  its ``ACL LOG``);
* its first write is one that an out-of-memory server refuses (``HSET``/``ZADD``): the
  server refuses only a script's first such write, and only if nothing was written
  before it; and it announces (``PUBLISH``) only after storing what it announces.

The constants both sides share (:mod:`pyprocsync.core.wire`) appear in the Lua text
below as ``${name}`` and are substituted by :meth:`Script.source`.

Numbers cross the script boundary as decimal integer strings (microseconds fit a Lua
double exactly; Lua's default number format would keep only 14 digits).
"""

from __future__ import annotations

import enum
from string import Template

from pyprocsync.core.wire import CORRUPT_MARKER, LUA_NAMES

__all__ = ["CORRUPT_MARKER", "Script"]

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local H, Z = KEYS[1], KEYS[2]

local function corrupt(what)
  error({err = '${corrupt_marker} ' .. what .. ' of ' .. H})
end

-- Before its first write, a script makes sure the ACL lets this user run each of the
-- commands (on 'target', a key or channel; nil: none) it may run after it: a refusal
-- half way would leave a partial write. (A refused first write changed nothing; the
-- server refuses it itself, and records it in its ACL LOG.) Servers before 7 cannot
-- tell (they refuse the command when it runs).
local function allowed(target, ...)
  if not redis.acl_check_cmd then return end
  for _, command in ipairs({...}) do
    local ok
    if target then
      ok = redis.acl_check_cmd(command, target)
    else
      ok = redis.acl_check_cmd(command)
    end
    if not ok then
      local on = target and (' on ' .. target) or ''
      error({err = "${refused_marker} no permissions to run the '" .. string.lower(command)
        .. "' command" .. on .. ' (checked before any write: nothing was changed)'})
    end
  end
end

-- What every event script that writes may run (see allowed()).
local function event_allowed(channel, ...)
  allowed(H, 'HGET', 'HSET', 'HDEL', 'PEXPIRE')
  allowed(Z, 'ZRANGE', 'DEL', 'PEXPIRE', ...)
  if channel then allowed(channel, '${publish}') end
end

local function fmt(x)
  return string.format('%d', x)
end

-- Run a read that fails on a key of the wrong type: that is corrupt data ('what'); any
-- other failure (an ACL refusal) is raised as it is.
local function checked(what, ...)
  local ok, result = pcall(redis.call, ...)
  if ok then return result end
  local message = type(result) == 'table' and result.err or tostring(result)
  if string.find(message, 'WRONGTYPE', 1, true) then corrupt(what) end
  error(result)
end

local function announce(channel, message)
  redis.call('${publish}', channel, message)
end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- "Now" for an instant: the caller's clock (µs), or when negative the server's, marked ' s'.
local function now_us(given)
  if given >= 0 then return given, '' end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]), ' s'
end

-- The lead time: the given one, or (given negative) the automatic one: twice the slowest
-- recent announcement (field L), at least the floor. Each automatically led release
-- lowers L by 1/32, so a past spike is forgotten after some tens of rounds.
local function lead(given, latency, floor)
  if given >= 0 then return given end
  redis.call('HSET', H, 'L', fmt(math.floor(latency * 31 / 32)))
  return math.max(floor, 2 * latency)
end

local function int_field(field)
  local v = checked('key type', 'HGET', H, field)
  if not v then return nil end
  local x = tonumber(v)
  if not x or x < 0 or x ~= math.floor(x) or x > 1e15 then corrupt('field ' .. field) end
  return x
end

local function outcome_of(g)
  local o = redis.call('HGET', H, 'o' .. fmt(g % ${outcome_slots}))
  if o and string.match(o, '^[RB] (%d+) ') == fmt(g) then return o end
  return nil
end

-- The decision of round g: its outcome, STATE_LOST if its state is gone, EVICTED if its
-- outcome was evicted; nil while g is the current, undecided round.
local function settled(g)
  local o = outcome_of(g)
  if o then return o end
  local cur = int_field('g')
  if cur == nil or cur < g then return ${verdict_state_lost} end
  if cur > g then return ${verdict_evicted} end
  return nil
end

local function keep(retention)
  redis.call('PEXPIRE', H, retention)
  if Z then redis.call('PEXPIRE', Z, retention) end
end

-- Drop the current round's waiters: their leases and their arrival indices.
local function forget_waiters()
  local fields = {}
  for _, member in ipairs(redis.call('ZRANGE', Z, 0, -1)) do
    fields[#fields + 1] = 'm:' .. member
    if #fields == 1000 then
      redis.call('HDEL', H, unpack(fields))
      fields = {}
    end
  end
  if #fields > 0 then redis.call('HDEL', H, unpack(fields)) end
  redis.call('DEL', Z)
end

local function decide(g, outcome, channel)
  redis.call('HSET', H, 'o' .. fmt(g % ${outcome_slots}), outcome)  -- stored, then announced
  forget_waiters()
  announce(channel, outcome)
  return outcome
end

local function break_round(g, reason, missing, channel)
  local m = '[]'
  if #missing > 0 then m = cjson.encode(missing) end
  local o = 'B ' .. fmt(g) .. ' ' .. reason .. ' ' .. fmt(int_field('n') or 0) .. ' '
    .. fmt(int_field('k') or 0) .. ' ' .. m
  return decide(g, o, channel)
end

local function lapsed(now)
  return checked('lease set type', 'ZRANGEBYSCORE', Z, '-inf', '(' .. fmt(now), 'LIMIT', 0, 16)
end
"""

_ARRIVE = """
-- ARRIVE (wire.Arrive): join the current round of the event.
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] nodes, ARGV[2] member, ARGV[3] liveness ms, ARGV[4] retention ms,
-- ARGV[5] caller's wall clock at arrival, epoch µs (negative: use the server's clock),
-- ARGV[6] lead µs (negative: automatic, see lead()), ARGV[7] channel,
-- ARGV[8] 1 if the caller, when last, runs an action before the release (else 0),
-- ARGV[9] how long the caller took to learn of this event's last release, µs (0: none),
-- ARGV[10] the automatic lead's floor, µs,
-- ARGV[11] the latest generation the caller saw released (negative: none),
-- ARGV[12] the caller's clock bound, µs (no_bound: not known),
-- ARGV[13] the widest bound the caller accepts, µs (no_bound: any)
-- Returns {status (wire.Arrival), generation, index, outcome}:
--   {JOINED, g, index, ''}        joined; waiting for the others
--   {JOINED, g, index, 'R ...'}   joined as the last arrival: the round is released
--   {REFUSED, g, -1, 'B ...'}     refused: the round is broken (this arrival may have broken
--                                 it: a clock bound beyond the tolerance, reason uncertain)
--   {MISMATCH, g, expected, 'B ...'} refused: nodes differs from the round's; now broken
--   {ACT, g, index, ''}           joined as the last arrival with an action: run it, then
--                                 RELEASE (or ABANDON with reason 'action' if it failed)
--   {CLOSING, g, -1, ''}          refused for now: the round is full and its action runs;
--                                 arrive again once round g is decided
--   {STALE, g, -1, ''}            refused: g <= ARGV[11], the state went back in time
--                                 (lost writes); nothing was counted
-- An ARRIVE of a member already waiting in the round (the same call sent again)
-- counts nothing and returns that member's {JOINED or ACT, g, index, ''}.
local nodes, member = tonumber(ARGV[1]), ARGV[2]
local liveness, retention = tonumber(ARGV[3]), tonumber(ARGV[4])
local arrival_us, lead_us, channel = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local hold = ARGV[8] == '1'
local reported, floor = tonumber(ARGV[9]), tonumber(ARGV[10])
local bound, tolerance = tonumber(ARGV[12]), tonumber(ARGV[13])
if bound == ${no_bound} then bound = ${unbounded_us} end
event_allowed(channel, 'ZSCORE', 'ZCARD', 'ZRANGEBYSCORE', 'ZADD')
allowed(nil, 'TIME')
local g = int_field('g') or 0
if g <= tonumber(ARGV[11]) then return {${arrival_stale}, g, -1, ''} end
local o = outcome_of(g)
if o then
  keep(retention)
  return {${arrival_refused}, g, -1, o}
end
local counted = redis.call('HGET', H, 'm:' .. member)
if counted then  -- the same call sent twice (a client retry): it is counted once
  if redis.call('HGET', H, 'a') == member then return {${arrival_act}, g, tonumber(counted), ''} end
  return {${arrival_joined}, g, tonumber(counted), ''}
end
local actor = redis.call('HGET', H, 'a')
if actor then
  if not checked('lease set type', 'ZSCORE', Z, actor) then corrupt('field a') end
  return {${arrival_closing}, g, -1, ''}
end
-- Every earlier round was decided (its outcome stored), and each arrival counted in
-- this one holds a lease: anything else is data pyprocsync did not write.
if g > 0 and not outcome_of(g - 1) then corrupt('field g') end
local counted_so_far = int_field('n') or 0
if counted_so_far ~= checked('lease set type', 'ZCARD', Z) then corrupt('field n') end
local now = server_ms()
local gone = lapsed(now)
if #gone > 0 then
  o = break_round(g, 'lost', gone, channel)
  keep(retention)
  return {${arrival_refused}, g, -1, o}
end
local latency = int_field('L') or 0
if reported > latency then
  latency = reported
  redis.call('HSET', H, 'L', fmt(latency))
end
local n = int_field('n') or 0
local k = int_field('k')
if n == 0 then
  k = nodes
elseif not k then
  corrupt('field k')
elseif k ~= nodes then
  o = break_round(g, 'mismatch', {}, channel)
  keep(retention)
  return {${arrival_mismatch}, g, k, o}
elseif n >= k then
  corrupt('field n')
end
-- The widest clock bound of the round against its smallest tolerance.
local widest, widest_member = int_field('W') or 0, redis.call('HGET', H, 'w') or member
if bound >= widest then widest, widest_member = bound, member end
local limit = int_field('T')
if tolerance ~= ${no_bound} and (not limit or tolerance < limit) then limit = tolerance end
if limit and widest > limit then
  o = break_round(g, ${uncertain}, {{widest_member, fmt(widest), fmt(limit)}}, channel)
  keep(retention)
  return {${arrival_refused}, g, -1, o}
end
local index, rest = n, nil
local free = redis.call('HGET', H, 'f')
if free and free ~= '' then
  local first
  first, rest = string.match(free, '^(%d+) ?(.*)$$')
  if not first or tonumber(first) >= k then corrupt('field f') end
  index = tonumber(first)
end
n = n + 1
if n >= k and not hold then
  lead_us = lead(lead_us, latency, floor)
  local at, basis = now_us(arrival_us)
  o = decide(g, 'R ' .. fmt(g) .. ' ' .. fmt(at + lead_us) .. ' ' .. fmt(lead_us) .. basis, channel)
  redis.call('HSET', H, 'g', fmt(g + 1), 'n', 0)
  redis.call('HDEL', H, 'k', 'f', 'T', 'W', 'w')
  keep(retention)
  return {${arrival_joined}, g, index, o}
end
redis.call('ZADD', Z, now + liveness, member)  -- the first write unless L moved
redis.call('HSET', H, 'g', fmt(g), 'n', n, 'k', k, 'm:' .. member, index,
  'W', fmt(widest), 'w', widest_member)
if limit then redis.call('HSET', H, 'T', fmt(limit)) end
if rest then redis.call('HSET', H, 'f', rest) end
if n == 1 then redis.call('HSET', H, 't', fmt(now)) end
keep(retention)
if n >= k then
  redis.call('HSET', H, 'a', member)
  return {${arrival_act}, g, index, ''}
end
return {${arrival_joined}, g, index, ''}
"""

_CHECK = """
-- CHECK (wire.Check): renew this participant's lease; read (or, if a lease lapsed,
-- make) the decision.
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] generation, ARGV[2] member, ARGV[3] liveness ms, ARGV[4] retention ms,
-- ARGV[5] channel
-- Returns the round's outcome, UNDECIDED, STATE_LOST or EVICTED (see the module doc).
local g, member = tonumber(ARGV[1]), ARGV[2]
local liveness, retention, channel = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
event_allowed(channel, 'ZSCORE', 'ZADD', 'ZRANGEBYSCORE')
allowed(nil, 'TIME')
local o = settled(g)
if o then return o end
if not redis.call('ZSCORE', Z, member) then return ${verdict_state_lost} end
local now = server_ms()
redis.call('ZADD', Z, now + liveness, member)
local gone = lapsed(now)
if #gone > 0 then o = break_round(g, 'lost', gone, channel) end
keep(retention)
return o or ${verdict_undecided}
"""

_ABANDON = """
-- ABANDON (wire.Abandon): break the round unless it is already decided (a participant
-- gave up).
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] generation, ARGV[2] reason, ARGV[3] retention ms, ARGV[4] channel
-- Returns the round's outcome (the one already decided, else the new 'B ...'), or
-- STATE_LOST/EVICTED.
event_allowed(ARGV[4])
local g = tonumber(ARGV[1])
local o = settled(g)
if o then return o end
o = break_round(g, ARGV[2], {}, ARGV[4])
keep(tonumber(ARGV[3]))
return o
"""

_WITHDRAW = """
-- WITHDRAW (wire.Withdraw): take back an arrival whose round is undecided (the caller
-- was interrupted, perhaps before it read ARRIVE's reply: then it passes a negative
-- generation, wire.CURRENT_ROUND: the current one).
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] generation or negative, ARGV[2] member, ARGV[3] retention ms
-- The last arrival itself may withdraw before it started its action (it was
-- interrupted while ARRIVE's reply was in flight): the round waits for a new last one.
-- Returns UNDECIDED once withdrawn (its index is handed to the next arrival); ACTING
-- when the round is complete and another participant runs its action; STATE_LOST
-- when this member is not waiting in the round; else the round's outcome, or EVICTED.
event_allowed(nil)  -- ZREM is its first write: refused, it changed nothing
local g = tonumber(ARGV[1])
if g < 0 then g = int_field('g') or 0 end
local o = settled(g)
if o then return o end
local actor = redis.call('HGET', H, 'a')
if actor and actor ~= ARGV[2] then return ${verdict_acting} end
local field = 'm:' .. ARGV[2]
local index = redis.call('HGET', H, field)
if redis.call('ZREM', Z, ARGV[2]) == 0 or not index then return ${verdict_state_lost} end
redis.call('HDEL', H, field, 'a')
local n = (int_field('n') or 1) - 1
if n <= 0 then
  redis.call('HSET', H, 'n', 0)
  redis.call('HDEL', H, 'k', 'f', 'T', 'W', 'w')
else
  local free = redis.call('HGET', H, 'f')
  if free and free ~= '' then free = free .. ' ' .. index else free = index end
  redis.call('HSET', H, 'n', n, 'f', free)
end
keep(tonumber(ARGV[3]))
return ${verdict_undecided}
"""

_RESET = """
-- RESET (wire.Reset): break the current round if anyone waits in it or it is broken,
-- and open the next.
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] retention ms, ARGV[2] channel
-- Returns the generation the next arrival joins.
event_allowed(ARGV[2])
local cur = int_field('g')
if cur == nil then return 0 end
local o = outcome_of(cur)
if not o and (int_field('n') or 0) == 0 then return cur end
if not o then break_round(cur, 'reset', {}, ARGV[2]) end
redis.call('HSET', H, 'g', fmt(cur + 1), 'n', 0)
redis.call('HDEL', H, 'k', 'f', 'a', 'T', 'W', 'w')
forget_waiters()
keep(tonumber(ARGV[1]))
return cur + 1
"""


_RELEASE = """
-- RELEASE (wire.Release): the last arrival ran its action; release the round now.
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] generation, ARGV[2] member (the actor), ARGV[3] caller's wall clock, epoch µs
-- (negative: the server's), ARGV[4] lead µs (negative: automatic), ARGV[5] retention ms,
-- ARGV[6] channel, ARGV[7] the automatic lead's floor, µs
-- Returns the round's outcome: 'R ...' now, or the one decided while the action ran
-- (a timeout or a lapsed lease broke it); STATE_LOST/EVICTED as CHECK.
event_allowed(ARGV[6])
allowed(nil, 'TIME')
local g = tonumber(ARGV[1])
local o = settled(g)
if o then return o end
if redis.call('HGET', H, 'a') ~= ARGV[2] then return ${verdict_state_lost} end
local lead_us = lead(tonumber(ARGV[4]), int_field('L') or 0, tonumber(ARGV[7]))
local at, basis = now_us(tonumber(ARGV[3]))
o = decide(g, 'R ' .. fmt(g) .. ' ' .. fmt(at + lead_us) .. ' ' .. fmt(lead_us) .. basis, ARGV[6])
redis.call('HSET', H, 'g', fmt(g + 1), 'n', 0)
redis.call('HDEL', H, 'k', 'f', 'a', 'T', 'W', 'w')
keep(tonumber(ARGV[5]))
return o
"""

_ABORT = """
-- ABORT (wire.Abort): break the current round, whoever waits in it (Barrier.abort).
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] retention ms, ARGV[2] channel
-- Returns the current round's outcome: the new 'B ... abort ...', or the one it had.
event_allowed(ARGV[2])
local g = int_field('g') or 0
local o = outcome_of(g)
if not o then
  redis.call('HSET', H, 'g', fmt(g))
  o = break_round(g, 'abort', {}, ARGV[2])
end
keep(tonumber(ARGV[1]))
return o
"""

_READ = """
-- READ (wire.Read, decoded by wire.decode_read): the current round, without changing
-- anything.
-- KEYS[1] state hash, KEYS[2] lease set
-- Returns {generation, arrived, expected (0 if none), outcome of the current round or '',
-- lease members of the waiting participants (at most 64)}.
local g = int_field('g') or 0
local waiting = checked('lease set type', 'ZRANGE', Z, 0, 63)
return {g, int_field('n') or 0, int_field('k') or 0, outcome_of(g) or '', waiting}
"""

_LOST = """
-- LOST (wire.Lost): break the round because registered members of the run vanished
-- (their membership lapsed) without arriving in it.
-- KEYS[1] state hash, KEYS[2] lease set
-- ARGV[1] generation, ARGV[2] retention ms, ARGV[3] channel, ARGV[4..] node ids of
-- the lapsed members
-- Returns UNDECIDED (and changes nothing) when every one of them is waiting in the
-- round or the round has no arrival yet; else the round's outcome (already decided, or
-- the new 'B <g> lost ...' naming the absent ones, see wire.absent_member), or
-- STATE_LOST/EVICTED.
event_allowed(ARGV[3])
local g = tonumber(ARGV[1])
local o = settled(g)
if o then return o end
if (int_field('n') or 0) == 0 then return ${verdict_undecided} end
local present = {}
local members = checked('lease set type', 'ZRANGE', Z, 0, -1)
for _, member in ipairs(members) do present[string.sub(member, ${member_tag_hex} + 2)] = true end
local missing = {}
local absent = string.rep('0', ${member_tag_hex}) .. ':'
for i = 4, #ARGV do
  if not present[ARGV[i]] then missing[#missing + 1] = absent .. ARGV[i] end
end
if #missing == 0 then return ${verdict_undecided} end
o = break_round(g, 'lost', missing, ARGV[3])
keep(tonumber(ARGV[2]))
return o
"""

_MEMBER = """
-- MEMBER (wire.Member): renew, end or just read registrations in a run's member set.
-- KEYS[1] member set (sorted set: node id -> registration expiry, server ms)
-- ARGV[1] node id, ARGV[2] lease ms (> 0: renew it; LEAVE: the member leaves;
-- negative, wire.READ_ONLY: read only), ARGV[3] retention ms
-- Returns the node ids whose registration lapsed (at most 16), longest lapsed first.
-- A lapsed registration is kept (and reported) until retention ms after it lapsed.
local M = KEYS[1]
local lease = tonumber(ARGV[2])
allowed(nil, 'TIME')
allowed(M, 'EXISTS', 'PEXPIRE', 'ZRANGEBYSCORE')  -- the first write needs no check
if lease > 0 then allowed(M, 'ZADD') elseif lease == ${leave} then allowed(M, 'ZREM') end
local now = server_ms()
local retention = tonumber(ARGV[3])
checked('member set type', 'ZREMRANGEBYSCORE', M, '-inf', '(' .. fmt(now - retention))
if lease > 0 then
  redis.call('ZADD', M, now + lease, ARGV[1])
elseif lease == ${leave} then
  redis.call('ZREM', M, ARGV[1])
end
if redis.call('EXISTS', M) == 1 then redis.call('PEXPIRE', M, retention + lease) end
return redis.call('ZRANGEBYSCORE', M, '-inf', '(' .. fmt(now), 'LIMIT', 0, 16)
"""

_FLAG_SET = """
-- FLAG_SET (wire.FlagSetCall): set the flag (Event.set). Setting a set flag changes
-- nothing.
-- KEYS[1] flag hash: v (0/1), s (sets so far), o (last set: 'S <s> <at µs> <lead µs>',
-- with ' s' when the instant is on the server's clock; decoded by wire.parse_set)
-- ARGV[1] caller's wall clock, epoch µs (negative: the server's), ARGV[2] lead µs,
-- ARGV[3] retention ms,
-- ARGV[4] channel
-- Returns the flag's last set: the new one (stored, then published) or the one in force.
allowed(H, 'HGET', 'HSET', 'PEXPIRE')
allowed(ARGV[4], '${publish}')
local v, s = int_field('v') or 0, int_field('s') or 0
if v == 1 then
  local o = redis.call('HGET', H, 'o')
  if o then
    keep(tonumber(ARGV[3]))
    return o
  end
end
s = s + 1
local lead_us = tonumber(ARGV[2])
local at, basis = now_us(tonumber(ARGV[1]))
local o = 'S ' .. fmt(s) .. ' ' .. fmt(at + lead_us) .. ' ' .. fmt(lead_us) .. basis
redis.call('HSET', H, 'v', 1, 's', fmt(s), 'o', o)
announce(ARGV[4], o)
keep(tonumber(ARGV[3]))
return o
"""

_FLAG_CLEAR = """
-- FLAG_CLEAR (wire.FlagClear): clear the flag (Event.clear); waiters already woken stay
-- woken.
-- KEYS[1] flag hash
-- ARGV[1] retention ms
-- Returns 1.
allowed(H, 'HGET', 'HSET', 'PEXPIRE')
int_field('s')
redis.call('HSET', H, 'v', 0)
keep(tonumber(ARGV[1]))
return 1
"""

_FLAG_CHECK = """
-- FLAG_CHECK (wire.FlagCheck): what a waiter needs to know (Event.wait, Event.is_set).
-- It renews the flag's lifetime, so a flag never expires (and restarts its numbering)
-- under a waiter.
-- KEYS[1] flag hash
-- ARGV[1] sets the waiter saw when it began waiting, or negative when it begins now,
-- ARGV[2] retention ms
-- Returns {v, s, o}: o is the last set if the flag is set now or was set more than
-- ARGV[1] times (the waiter is woken), else ''.
allowed(H, 'HGET', 'EXISTS', 'PEXPIRE')
local seen = tonumber(ARGV[1])
local v, s = int_field('v') or 0, int_field('s') or 0
if redis.call('EXISTS', H) == 1 then keep(tonumber(ARGV[2])) end
local o = redis.call('HGET', H, 'o') or ''
if v == 1 or (seen >= 0 and s > seen) then return {v, s, o} end
return {v, s, ''}
"""


class Script(enum.Enum):
    """The protocol's scripts; the value is the Lua source, see :meth:`source`."""

    ARRIVE = _PRELUDE + _ARRIVE
    CHECK = _PRELUDE + _CHECK
    ABANDON = _PRELUDE + _ABANDON
    WITHDRAW = _PRELUDE + _WITHDRAW
    RESET = _PRELUDE + _RESET
    RELEASE = _PRELUDE + _RELEASE
    ABORT = _PRELUDE + _ABORT
    READ = _PRELUDE + _READ
    LOST = _PRELUDE + _LOST
    MEMBER = _PRELUDE + _MEMBER
    FLAG_SET = _PRELUDE + _FLAG_SET
    FLAG_CLEAR = _PRELUDE + _FLAG_CLEAR
    FLAG_CHECK = _PRELUDE + _FLAG_CHECK

    def source(self, *, sharded: bool = False) -> str:
        """The script's text, the names of :data:`~pyprocsync.core.wire.LUA_NAMES`
        substituted: announcements by ``SPUBLISH`` when ``sharded`` (a cluster of
        servers >= 7, where classic ``PUBLISH`` would reach every shard), else by
        ``PUBLISH``."""
        return Template(self.value).substitute(
            LUA_NAMES, publish="SPUBLISH" if sharded else "PUBLISH"
        )
