"""The Lua scripts of the N-arm pacer in Redis (`arm_redis.RedisArmPacer`); each runs atomically on the server.

Keys (one Redis Cluster hash tag with the two-arm budget's keys, so all live in one slot; KEYS in this order):

    {prefix}:arms:<layout>:settings  hash  budget, remote_cap ("" = none), updated_at   (what PUT /admin/budget sets)
    {prefix}:arms:<layout>:counters  hash  next_ticket, window_cost, window_allowance, credit, lam, score_seq
    {prefix}:arms:<layout>:order     list  decision window tickets, oldest first
    {prefix}:arms:<layout>:entries   hash  ticket → "arm|cost|allowance|quality" (quality "" when not scored)
    {prefix}:arms:<layout>:scores    list  the recent predictions, one "q_0,q_1,..." row each, oldest first
    {prefix}:arms:<layout>:calls:<a> zset  arm a's calls of the last minute: member = ticket (+ a tag), score = time

`<layout>` hashes the arms' names and costs: replicas with another arm list keep another window. The arithmetic
mirrors `ArmPacer` (gateway/budget/arm_pacer.py) operation for operation, so one replica on Redis decides exactly
like one process in memory (tests/test_arm_redis.py checks it); λ itself is computed by each replica from the
shared score window and credit (`pacing.calibrated_lambda`: a bisection, not worth running in Lua) and written
back with each decision.
"""

from __future__ import annotations

KEY_NAMES = ("settings", "counters", "order", "entries", "scores")

# ARGV[1..3] = the caller's last known budget, remote_cap ("" = none), updated_at: re-seeds a wiped Redis.
PROLOGUE = """
local EPS = 1e-9
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'budget', ARGV[1], 'remote_cap', ARGV[2], 'updated_at', ARGV[3])
end
local budget = tonumber(redis.call('HGET', KEYS[1], 'budget'))
local remote_cap = tonumber(redis.call('HGET', KEYS[1], 'remote_cap') or '')
local A = #KEYS - 5
local function fmt(x) return string.format('%.17g', x) end
local function counter(name) return tonumber(redis.call('HGET', KEYS[2], name) or '0') end
local function calls_key(a) return KEYS[6 + a] end
local function prune(a, now, period)
  redis.call('ZREMRANGEBYSCORE', calls_key(a), '-inf', fmt(now - period))
  return redis.call('ZCARD', calls_key(a))
end
local function parse_entry(raw)
  local arm, cost, allowance, quality = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return tonumber(arm), tonumber(cost), tonumber(allowance), quality
end
local function entry(arm, cost, allowance, quality)
  return arm .. '|' .. fmt(cost) .. '|' .. fmt(allowance) .. '|' .. quality
end
local function clip(x, limit)
  if x > limit then return limit elseif x < -limit then return -limit end
  return x
end
local function rate_allows(a, now, period, caps, remote)
  local cap = caps[a + 1]
  if cap >= 0 and prune(a, now, period) + 1 > cap then return false end
  if remote[a + 1] == 1 and remote_cap ~= nil then
    local total = 0
    for b = 0, A - 1 do
      if remote[b + 1] == 1 then total = total + prune(b, now, period) end
    end
    if total + 1 > remote_cap then return false end
  end
  return true
end
-- add `cost` to the entry of `ticket` (the credit moves whether or not it is still in the window)
local function charge(ticket, cost, arm, quality, credit_limit)
  local spent = 0
  if budget > 0 then spent = cost / budget end
  redis.call('HSET', KEYS[2], 'credit', fmt(clip(counter('credit') - spent, credit_limit)))
  local raw = redis.call('HGET', KEYS[4], ticket)
  if not raw then return 0 end
  local _, old_cost, allowance = parse_entry(raw)
  redis.call('HSET', KEYS[4], ticket, entry(arm, old_cost + cost, allowance, quality))
  redis.call('HSET', KEYS[2], 'window_cost', fmt(counter('window_cost') + cost))
  return 1
end
"""

# ARGV[4..] = now, period, seen (the last score sequence number the caller holds).
# Returns budget, remote_cap, credit, lam, window_cost, window_allowance, decisions, oldest cost, oldest allowance,
# score_seq, reset ("1": the rows are the whole window), rows (a list), then each arm's calls of the last period.
STATE = (
    PROLOGUE
    + """
local now, period, seen = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local seq, stored = counter('score_seq'), redis.call('LLEN', KEYS[5])
local rows, reset = {}, '0'
if seq - seen >= stored or seen > seq then
  rows, reset = redis.call('LRANGE', KEYS[5], 0, -1), '1'
elseif seq > seen then
  rows = redis.call('LRANGE', KEYS[5], -(seq - seen), -1)
end
local oldest_cost, oldest_allowance = '0', '0'
local first = redis.call('LINDEX', KEYS[3], 0)
if first then
  local _, cost, allowance = parse_entry(redis.call('HGET', KEYS[4], first))
  oldest_cost, oldest_allowance = fmt(cost), fmt(allowance)
end
local out = {fmt(budget), redis.call('HGET', KEYS[1], 'remote_cap') or '', fmt(counter('credit')),
             fmt(counter('lam')), fmt(counter('window_cost')), fmt(counter('window_allowance')),
             redis.call('LLEN', KEYS[3]), oldest_cost, oldest_allowance, seq, reset, rows}
for a = 0, A - 1 do out[#out + 1] = prune(a, now, period) end
return out
"""
)

# ARGV[4..] = now, period, order (JSON: arm indices best first), spare (JSON: for a refused forced call), n,
#             costs (JSON), caps (JSON, -1 = none), remote (JSON 0/1), decision_window, score_window,
#             credit_margin, credit_limit, lam ("" = keep), row ("" = push nothing), check ("1": apply the caps),
#             cost ("" = the arm's cost × n), quality ("" = none)
# Returns {ticket, chosen arm} (chosen: the first of order the caps allow, else of spare, else the cheapest).
COMMIT = (
    PROLOGUE
    + """
local now, period = tonumber(ARGV[4]), tonumber(ARGV[5])
local order, spare, n = cjson.decode(ARGV[6]), cjson.decode(ARGV[7]), tonumber(ARGV[8])
local costs, caps, remote = cjson.decode(ARGV[9]), cjson.decode(ARGV[10]), cjson.decode(ARGV[11])
local decision_window, score_window = tonumber(ARGV[12]), tonumber(ARGV[13])
local margin, credit_limit = tonumber(ARGV[14]), tonumber(ARGV[15])
local lam, row, check, fixed_cost, quality = ARGV[16], ARGV[17], ARGV[18] == '1', ARGV[19], ARGV[20]
if row ~= '' then
  redis.call('RPUSH', KEYS[5], row)
  redis.call('HINCRBY', KEYS[2], 'score_seq', 1)
  redis.call('LTRIM', KEYS[5], -score_window, -1)
end
if lam ~= '' then redis.call('HSET', KEYS[2], 'lam', lam) end
while redis.call('LLEN', KEYS[3]) >= decision_window do  -- the entry that leaves as this one comes
  local old = redis.call('LPOP', KEYS[3])
  local _, old_cost, old_allowance = parse_entry(redis.call('HGET', KEYS[4], old))
  redis.call('HDEL', KEYS[4], old)
  redis.call('HSET', KEYS[2], 'window_cost', fmt(counter('window_cost') - old_cost))
  redis.call('HSET', KEYS[2], 'window_allowance', fmt(counter('window_allowance') - old_allowance))
end
local function allows(a)
  if not rate_allows(a, now, period, caps, remote) then return false end
  local kept = redis.call('LLEN', KEYS[3]) + 1
  local allowance = counter('window_allowance') + budget + math.max(decision_window - kept, 0) * budget
  return counter('window_cost') + costs[a + 1] * n <= allowance + EPS
end
local chosen = nil
if check then
  for _, a in ipairs(order) do if chosen == nil and allows(a) then chosen = a end end
  for _, a in ipairs(spare) do if chosen == nil and allows(a) then chosen = a end end
  if chosen == nil then
    local pool = order
    if #spare > 0 then pool = spare end
    for _, a in ipairs(pool) do if chosen == nil or costs[a + 1] < costs[chosen + 1] then chosen = a end end
  end
else
  chosen = order[1]
end
if quality == '' and row ~= '' then  -- a decision: the chosen arm's predicted quality, from the row
  local i = 0
  for value in string.gmatch(row, '[^,]+') do
    if i == chosen then quality = value end
    i = i + 1
  end
end
local cost = costs[chosen + 1] * n
if fixed_cost ~= '' then cost = tonumber(fixed_cost) end
local ticket = redis.call('HINCRBY', KEYS[2], 'next_ticket', 1)
if cost > 0 then redis.call('ZADD', calls_key(chosen), fmt(now), ticket) end
redis.call('RPUSH', KEYS[3], ticket)
redis.call('HSET', KEYS[4], ticket, entry(chosen, cost, budget, quality))
redis.call('HSET', KEYS[2], 'window_cost', fmt(counter('window_cost') + cost))
redis.call('HSET', KEYS[2], 'window_allowance', fmt(counter('window_allowance') + budget))
local spent
if budget > 0 then spent = cost / budget elseif cost > 0 then spent = credit_limit else spent = 0 end
redis.call('HSET', KEYS[2], 'credit', fmt(clip(counter('credit') + (1.0 - margin) - spent, credit_limit)))
return {ticket, chosen}
"""
)

# ARGV[4..] = ticket, arm, cost, quality ("" = none), now, credit_limit. Another arm served a counted request (a
# fallback), or nothing did (a cache hit: cost 0): its cost replaces the first one's. Returns 1, or 0 when the
# ticket has left the window.
AMEND = (
    PROLOGUE
    + """
local ticket, arm, cost, quality = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local now, credit_limit = tonumber(ARGV[8]), tonumber(ARGV[9])
if cost > 0 then redis.call('ZADD', calls_key(arm), fmt(now), ticket .. ':f') end
local raw = redis.call('HGET', KEYS[4], ticket)
if not raw then return 0 end
local _, old_cost, allowance = parse_entry(raw)
local moved = 0
if budget > 0 then moved = (old_cost - cost) / budget end
redis.call('HSET', KEYS[2], 'credit', fmt(clip(counter('credit') + moved, credit_limit)))
redis.call('HSET', KEYS[2], 'window_cost', fmt(counter('window_cost') + (cost - old_cost)))
redis.call('HSET', KEYS[4], ticket, entry(arm, cost, allowance, quality))
return 1
"""
)

# ARGV[4..] = ticket ("" = none), arm, cost, quality, now, period, caps (JSON), remote (JSON), decision_window,
#             credit_limit. A second call on `arm` for a counted request (verify then escalate), under the arm's
#             cap, the remote cap and the window's hard cap. Returns 1 (counted on the request's entry) or 0.
ESCALATE = (
    PROLOGUE
    + """
local ticket, arm, cost, quality = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local now, period = tonumber(ARGV[8]), tonumber(ARGV[9])
local caps, remote = cjson.decode(ARGV[10]), cjson.decode(ARGV[11])
local decision_window, credit_limit = tonumber(ARGV[12]), tonumber(ARGV[13])
if not rate_allows(arm, now, period, caps, remote) then return 0 end
local allowance = counter('window_allowance')
  + math.max(decision_window - redis.call('LLEN', KEYS[3]), 0) * budget
if counter('window_cost') + cost > allowance + EPS then return 0 end
if cost > 0 then redis.call('ZADD', calls_key(arm), fmt(now), ticket .. ':e') end
charge(ticket, cost, arm, quality, credit_limit)
return 1
"""
)

# ARGV[4..] = ticket, arm (whose call failed), cost, to_arm, quality, credit_limit: undo ESCALATE.
GIVE_BACK = (
    PROLOGUE
    + """
local ticket, arm, cost, to_arm, quality = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
redis.call('ZREM', calls_key(arm), ticket .. ':e')
charge(ticket, -cost, to_arm, quality, tonumber(ARGV[9]))
return 1
"""
)

# ARGV[4..] = now, period. The window's entries (oldest first) and counters, for the snapshot.
SNAPSHOT = (
    PROLOGUE
    + """
local now, period = tonumber(ARGV[4]), tonumber(ARGV[5])
local tickets = redis.call('LRANGE', KEYS[3], 0, -1)
local raws = {}
if #tickets > 0 then raws = redis.call('HMGET', KEYS[4], unpack(tickets)) end
local calls = {}
for a = 0, A - 1 do calls[#calls + 1] = prune(a, now, period) end
return {fmt(budget), redis.call('HGET', KEYS[1], 'remote_cap') or '', fmt(counter('credit')), fmt(counter('lam')),
        fmt(counter('window_cost')), fmt(counter('window_allowance')), redis.call('LLEN', KEYS[5]), raws, calls}
"""
)
