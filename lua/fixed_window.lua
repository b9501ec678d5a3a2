--[[
fixed_window.lua: one atomic fixed-window check-and-increment.

Windows are aligned to the Unix epoch (a 60 s window runs from hh:mm:00 to
hh:mm:59.999), so every instance and every retry agrees on which window a
request falls in.

KEYS[1]  the counter of one identity under one policy:
         rate:{<strategy>:<id>}:<window seconds>
         The braces are a Redis Cluster hash tag: every key of one identity
         lands in one slot, so one script may touch several of them later.
         The value is a hash {w = start of its window (ms), c = units used}.
         Keeping the window start in the value, instead of putting it in the
         key name, means the script never has to build a key that the caller
         did not declare (which Redis Cluster forbids), and a counter from an
         old window is recognised as stale even before its TTL fires.

ARGV[1]  limit   units allowed per window, integer >= 1
ARGV[2]  window  window length in ms, integer >= 1
ARGV[3]  cost    units this request takes, integer >= 0. 0 is a peek: the
                 script reports the state and never writes.
ARGV[4]  now     optional, ms since the Unix epoch. Tests pass it to place
                 requests exactly at window edges; production leaves it empty
                 and the script reads the Redis server's clock (TIME), so
                 service instances with skewed clocks still agree.

Reply, an array of integers (the same shape for every algorithm):
  1 allowed      1 if the request fits (and was counted), 0 if denied.
                 A denied request counts nothing.
  2 limit        ARGV[1]
  3 remaining    units left in this window after this request
  4 reset        ms until the window ends and the full limit is back
  5 retry_after  ms until the same request would be allowed; 0 if allowed
  6 now          the clock this decision used (ms since the epoch), so the
                 caller can turn `reset` into an absolute time that every
                 instance agrees on.
]]

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local window_start = now - (now % window)
local reset = window_start + window - now

-- pcall: a key of another type (left by something else under our prefix)
-- must not turn every request of this identity into a script error. It is
-- replaced by a fresh counter.
local stored = redis.pcall('HMGET', key, 'w', 'c')
if type(stored) == 'table' and stored.err then
  redis.call('DEL', key)
  stored = {false, false}
end

local used = 0
if tonumber(stored[1]) == window_start then
  used = tonumber(stored[2]) or 0
end

if used + cost <= limit then
  if cost > 0 then
    used = used + cost
    redis.call('HSET', key, 'w', window_start, 'c', used)
    -- The counter dies with its window: nothing lives forever, and a stale
    -- counter costs no memory once its window is over.
    redis.call('PEXPIRE', key, reset)
  elseif redis.call('PTTL', key) == -1 then
    redis.call('PEXPIRE', key, reset)
  end
  return {1, limit, limit - used, reset, 0, now}
end

-- Denied. A counter found without a TTL (a PERSIST, or a write by another
-- tool) gets one, so it cannot pin this identity forever.
if redis.call('PTTL', key) == -1 then
  redis.call('PEXPIRE', key, reset)
end
-- max(): a limit lowered by a new configuration can be below what this
-- window already used.
return {0, limit, math.max(0, limit - used), reset, reset, now}
