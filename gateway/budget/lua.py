"""The Redis budget store's Lua scripts (each runs atomically on the Redis server).

Keys (one Redis Cluster hash tag, so every key lives in one slot; KEYS are passed in `KEY_NAMES` order):

    {prefix}:settings   hash   rho, rho_micro, cost_cap ("" = none), updated_at   (what PUT /admin/budget writes)
    {prefix}:counters   hash   next_ticket, score_seq, cloud, allowance (ρ millionths), credit
    {prefix}:scores     zset   score window: member = sequence number, score = PRŜ (quantiles by rank)
    {prefix}:score_fifo list   the score window's sequence numbers, oldest first (what to trim)
    {prefix}:order      list   decision window tickets, oldest first
    {prefix}:entries    hash   ticket → "backend|reason|allowance" for the decision window
    {prefix}:cloud_times zset  cloud calls of the last minute: member = ticket, score = time

`RULES` mirrors gateway/budget/rules.py function for function (same names); tests/test_budget_parity.py
runs both on the same random inputs.
"""

from __future__ import annotations

KEY_NAMES = ("settings", "counters", "scores", "score_fifo", "order", "entries", "cloud_times")

# The pure rules of gateway/budget/rules.py, in Lua (same names, same arithmetic, same order of operations).
RULES = """
local function window_cloud_limit(allowance_micro, decisions, decision_window, rho)
  local allowance = allowance_micro / 1000000 + math.max(decision_window - decisions, 0) * rho
  return math.floor(allowance + 1e-6)
end
local function caps_refuse(cloud, allowance_micro, decisions, decision_window, rho, cloud_last_minute, cost_cap,
                           window_cap)
  local over_window = window_cap ~= false
    and cloud + 1 > window_cloud_limit(allowance_micro, decisions, decision_window, rho)
  local over_minute = cost_cap ~= nil and cloud_last_minute + 1 > cost_cap
  return over_window or over_minute
end
local function credit_earned(rho, margin, is_cloud)
  return math.max(0, rho - margin) - is_cloud
end
local function clipped_credit(credit, amount, limit)
  local c = credit + amount
  if c > limit then c = limit elseif c < -limit then c = -limit end
  return c
end
local function quantile_position(level, n)
  local lo = math.floor(level * (n - 1))
  return lo, math.min(lo + 1, n - 1)
end
local function fmt(x)
  return string.format('%.17g', x)
end
"""

# Shared prologue: KEYS in KEY_NAMES order; ARGV[1..4] = the caller's last known rho, rho_micro, cost_cap, updated_at.
SEED = (
    RULES
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'rho', ARGV[1], 'rho_micro', ARGV[2], 'cost_cap', ARGV[3], 'updated_at', ARGV[4])
end
local rho = tonumber(redis.call('HGET', KEYS[1], 'rho'))
local rho_micro = tonumber(redis.call('HGET', KEYS[1], 'rho_micro'))
local cost_cap = tonumber(redis.call('HGET', KEYS[1], 'cost_cap') or '')
local function counter(name)
  return tonumber(redis.call('HGET', KEYS[2], name) or '0')
end
local function add_credit(amount, limit)
  redis.call('HSET', KEYS[2], 'credit', fmt(clipped_credit(counter('credit'), amount, limit)))
end
local function parse_entry(raw)
  local backend, reason, allowance = string.match(raw, '^([^|]*)|([^|]*)|(-?%d+)$')
  return backend, reason, tonumber(allowance)
end
"""
)

SETTINGS = SEED + "return {fmt(rho), redis.call('HGET', KEYS[1], 'cost_cap') or ''}"

# ARGV[5..] = now, period
STATE = (
    SEED
    + """
local now, period = tonumber(ARGV[5]), tonumber(ARGV[6])
return {fmt(rho), redis.call('HGET', KEYS[1], 'cost_cap') or '', redis.call('ZCARD', KEYS[3]),
        redis.call('LLEN', KEYS[5]), counter('cloud'), counter('allowance'),
        redis.call('ZCOUNT', KEYS[7], '(' .. fmt(now - period), '+inf'), fmt(counter('credit'))}
"""
)

# ARGV[5..] = backend, reason, prs ("" = none), now, period, score_window, decision_window, credit_limit,
#             credit_margin, enforce_caps ("1"/"0"), window_cap ("1"/"0": "0" = the cost cap only)
COMMIT = (
    SEED
    + """
local backend, reason, prs = ARGV[5], ARGV[6], ARGV[7]
local now, period = tonumber(ARGV[8]), tonumber(ARGV[9])
local score_window, decision_window = tonumber(ARGV[10]), tonumber(ARGV[11])
local credit_limit, credit_margin, enforce = tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14] == '1'
local window_cap = ARGV[15] ~= '0'
if prs ~= '' then
  local seq = redis.call('HINCRBY', KEYS[2], 'score_seq', 1)
  redis.call('ZADD', KEYS[3], prs, seq)
  redis.call('RPUSH', KEYS[4], seq)
  while redis.call('LLEN', KEYS[4]) > score_window do
    redis.call('ZREM', KEYS[3], redis.call('LPOP', KEYS[4]))
  end
end
while redis.call('LLEN', KEYS[5]) > decision_window - 1 do
  local old = redis.call('LPOP', KEYS[5])
  local old_backend, _, old_allowance = parse_entry(redis.call('HGET', KEYS[6], old))
  redis.call('HDEL', KEYS[6], old)
  if old_backend == 'cloud' then redis.call('HINCRBY', KEYS[2], 'cloud', -1) end
  redis.call('HINCRBY', KEYS[2], 'allowance', -old_allowance)
end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', fmt(now - period))
if backend == 'cloud' and enforce and caps_refuse(counter('cloud'), counter('allowance'), redis.call('LLEN', KEYS[5]),
                                                 decision_window, rho, redis.call('ZCARD', KEYS[7]), cost_cap,
                                                 window_cap) then
  backend, reason = 'edge', 'budget'
end
local ticket = redis.call('HINCRBY', KEYS[2], 'next_ticket', 1)
redis.call('RPUSH', KEYS[5], ticket)
redis.call('HSET', KEYS[6], ticket, backend .. '|' .. reason .. '|' .. rho_micro)
redis.call('HINCRBY', KEYS[2], 'allowance', rho_micro)
local is_cloud = 0
if backend == 'cloud' then
  is_cloud = 1
  redis.call('HINCRBY', KEYS[2], 'cloud', 1)
  redis.call('ZADD', KEYS[7], fmt(now), ticket)
end
add_credit(credit_earned(rho, credit_margin, is_cloud), credit_limit)
return {ticket, backend, reason, fmt(rho)}
"""
)

# ARGV[5..] = ticket, backend, reason, now, period, credit_limit
AMEND = (
    SEED
    + """
local ticket, backend, reason = ARGV[5], ARGV[6], ARGV[7]
local now, period, credit_limit = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', fmt(now - period))
local raw = redis.call('HGET', KEYS[6], ticket)
local timed = redis.call('ZSCORE', KEYS[7], ticket)
if not raw and not timed then return 0 end
local was_cloud = true
local allowance = 0
if raw then
  local old_backend, _, old_allowance = parse_entry(raw)
  was_cloud, allowance = old_backend == 'cloud', old_allowance
end
local is_cloud = backend == 'cloud'
add_credit((was_cloud and 1 or 0) - (is_cloud and 1 or 0), credit_limit)
if raw then
  redis.call('HINCRBY', KEYS[2], 'cloud', (is_cloud and 1 or 0) - (was_cloud and 1 or 0))
  redis.call('HSET', KEYS[6], ticket, backend .. '|' .. reason .. '|' .. allowance)
end
if was_cloud and not is_cloud and timed then
  redis.call('ZREM', KEYS[7], ticket)
elseif not was_cloud and is_cloud then
  redis.call('ZADD', KEYS[7], fmt(now), ticket)
end
return 1
"""
)

# KEYS[1] = scores; ARGV[1] = level in [0, 1]
QUANTILE = (
    RULES
    + """
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return {0} end
local lo, hi = quantile_position(tonumber(ARGV[1]), n)
local r = redis.call('ZRANGE', KEYS[1], lo, hi, 'WITHSCORES')
return {n, r[2], r[#r]}
"""
)
