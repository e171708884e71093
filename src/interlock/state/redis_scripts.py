"""The Lua scripts of the Redis state: each decision is one atomic script on the server.

Conventions, shared by every script:
- Time is the server's (``redis.call('TIME')``), so instances with skewed clocks agree.
- Fractions go back to Python as strings: Redis truncates Lua numbers to integers.
- Numbers stored as text use ``%.17g``, which round-trips a double exactly.
- Every key written gets a TTL in the same script, so nothing outlives its use.
- Lease ends and lock TTLs are in milliseconds of server time.

The rate-limit sums mirror ``interlock.state.gcra`` (the in-process limiter); keep both in
step.
"""

from __future__ import annotations

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

_DRAINED = """
local function drained(key, rate)
  local stored = redis.call('HMGET', key, 'l', 't')
  if not stored[1] or not stored[2] then return 0 end
  local level = tonumber(stored[1])
  local elapsed = now - tonumber(stored[2])
  if elapsed > 0 then
    level = level - elapsed * rate
    if level < 0 then level = 0 end
  end
  return level
end

local function store(key, level, rate)
  if level <= 0 then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'l', string.format('%.17g', level), 't', string.format('%.17g', now))
  -- one second of slack past the moment the bucket is empty again
  redis.call('PEXPIRE', key, math.ceil(level / rate * 1000) + 1000)
end
"""

# KEYS[i]: the bucket of scope i. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: its limit, window
# (seconds) and cost. Returns {admitted (0 or 1), level_1, ..., level_n}, each level being
# the scope's drained level before this request.
ADMIT = (
    _NOW
    + _DRAINED
    + """
local levels = {}
local admitted = 1
for i = 1, #KEYS do
  local limit = tonumber(ARGV[3 * i - 2])
  local level = drained(KEYS[i], limit / tonumber(ARGV[3 * i - 1]))
  levels[i] = level
  if level + tonumber(ARGV[3 * i]) > limit + 1e-9 then admitted = 0 end
end
local reply = {admitted}
for i = 1, #KEYS do
  local cost = tonumber(ARGV[3 * i])
  if admitted == 1 and cost ~= 0 then
    store(KEYS[i], levels[i] + cost, tonumber(ARGV[3 * i - 2]) / tonumber(ARGV[3 * i - 1]))
  end
  reply[i + 1] = string.format('%.17g', levels[i])
end
return reply
"""
)

# Same KEYS and ARGV as ADMIT, the cost being a signed change that is always applied.
ADJUST = (
    _NOW
    + _DRAINED
    + """
for i = 1, #KEYS do
  local change = tonumber(ARGV[3 * i])
  if change ~= 0 then
    local rate = tonumber(ARGV[3 * i - 2]) / tonumber(ARGV[3 * i - 1])
    store(KEYS[i], drained(KEYS[i], rate) + change, rate)
  end
end
return 1
"""
)

# KEYS[1]: a hash of counters named 's<bucket>' / 'f<bucket>'. ARGV[1]: window (seconds),
# ARGV[2]: buckets per window, ARGV[3]: 's' or 'f' to count an outcome, '' to only read.
# Returns {successes, failures} over the buckets of the window.
OUTCOMES = (
    _NOW
    + """
local window = tonumber(ARGV[1])
local buckets = tonumber(ARGV[2])
local current = math.floor(now * buckets / window)
local writing = ARGV[3] ~= ''
if writing then
  redis.call('HINCRBY', KEYS[1], ARGV[3] .. string.format('%d', current), 1)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
end
local fields = redis.call('HGETALL', KEYS[1])
local successes, failures, stale = 0, 0, {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if tonumber(string.sub(name, 2)) > current - buckets then
    if string.sub(name, 1, 1) == 's' then
      successes = successes + tonumber(fields[i + 1])
    else
      failures = failures + tonumber(fields[i + 1])
    end
  else
    stale[#stale + 1] = name
  end
end
if writing and #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
return {successes, failures}
"""
)

# KEYS[1]: a sorted set of holder -> lease end. ARGV: holder, limit, lease (ms).
# Returns 1 if the holder now holds a slot, else 0.
SLOT_ACQUIRE = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
"""
)

# KEYS[1]: as SLOT_ACQUIRE. ARGV: holder, lease (ms). 1 if renewed, 0 if not held.
SLOT_RENEW = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[2])
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not ends or tonumber(ends) <= now then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
"""
)

# KEYS[1]: as SLOT_ACQUIRE. ARGV: holder. 1 if it held a live slot (now released), else 0.
SLOT_RELEASE = (
    _NOW_MS
    + """
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not ends then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ends) <= now then return 0 end
return 1
"""
)

# KEYS[1]: as SLOT_ACQUIRE. Removes the holders whose lease ended; returns how many.
SLOT_PRUNE = (
    _NOW_MS
    + """
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if removed > 0 and redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return removed
"""
)

# KEYS: sorted sets as SLOT_ACQUIRE. Returns the number of live holders of each.
SLOT_COUNTS = (
    _NOW_MS
    + """
local counts = {}
local live = '(' .. string.format('%d', now)
for i = 1, #KEYS do counts[i] = redis.call('ZCOUNT', KEYS[i], live, '+inf') end
return counts
"""
)

# KEYS[1]: the lock. ARGV: owner, lease (ms). 1 if held by owner now, else 0.
LOCK_ACQUIRE = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1]: the lock. ARGV: owner, lease (ms). 1 if the owner's lease was extended, else 0.
LOCK_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]: the lock. ARGV: owner. 1 if the owner held it and it is now free, else 0.
LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
