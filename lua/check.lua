--[[
check.lua: the one script run per request (with EVALSHA). It checks every
policy that applies to one identity, all-or-nothing: if any enforced policy
denies, none is charged. A shadow policy is checked and charged like the
others but never blocks: its denial is reported, not enforced, and only
that policy goes uncharged.

The service loads it with the four algorithm modules placed before it
(fixed_window.lua, sliding_window.lua, token_bucket.lua, gcra.lua), each
bound as ALGORITHMS[<name>] (see src/redis/scripts.rs), so the SHA covers
all of them.

KEYS[i]   the counter of policy i: rate:{<strategy>:<id>}:... All keys of one
          call carry the same hash tag {<strategy>:<id>}, so the call stays in
          one Redis Cluster slot.
ARGV[1]   now: ms since the Unix epoch, or empty to use the Redis server's
          clock (TIME). Only tests pass it; reading the clock inside Redis
          makes instances with skewed clocks agree.
ARGV[2 + 5(i-1) ..]  five per policy i:
          algorithm  fixed_window | sliding_window | token_bucket | gcra
          limit      integer >= 1
          window     ms, integer >= 1
          cost       integer: > 0 charges, 0 reads only (a status), < 0 refunds
                     (gives units back, never below an empty counter; a
                     refund is always allowed and always written)
          shadow     1: report this policy's denial, never enforce it; 0: enforce

Reply, an array of integers:
  1  allowed   1 if every enforced policy allowed (and the policies that
               allowed were charged), else 0 (and nothing was charged)
  2  now       the clock the decision used (ms since the epoch)
  then five per policy i, the common reply shape of every algorithm:
     allowed, limit, remaining, reset (ms until full again),
     retry_after (ms until this policy would allow; 0 if it does)
  When the request is denied, `remaining` of the policies that would have
  allowed it is their level before the (uncharged) request.
]]

-- Expiry only collects garbage: every stored value carries its own time
-- (window start, last refill, TAT), so a key read after it stopped mattering
-- is recognised as stale anyway. The slack keeps a key from vanishing
-- between two calls that a test's explicit clock places 1 ms apart while
-- real time moves on; it costs one second of memory per idle identity.
local TTL_SLACK = 1000

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local verdicts = {}
local all_allowed = true
for i = 1, #KEYS do
  local base = 2 + 5 * (i - 1)
  local algorithm = ALGORITHMS[ARGV[base]]
  if not algorithm then
    return redis.error_reply('unknown algorithm ' .. tostring(ARGV[base]))
  end
  local limit, window, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local verdict = algorithm.check(KEYS[i], limit, window, cost, now)
  verdict.limit = limit
  verdict.cost = cost
  verdicts[i] = verdict
  if ARGV[base + 4] ~= '1' then
    all_allowed = all_allowed and verdict.allowed
  end
end

local reply = { all_allowed and 1 or 0, now }
for i, v in ipairs(verdicts) do
  local remaining = v.remaining
  if v.cost < 0 or (all_allowed and v.allowed and v.cost > 0) then
    v.commit(v.ttl + TTL_SLACK)
  else
    if v.allowed and not all_allowed and v.cost > 0 then
      remaining = remaining + v.cost -- nothing was taken
    end
    -- A counter found without a TTL (a PERSIST, a write by another tool)
    -- gets one, so it cannot pin this identity forever.
    if redis.call('PTTL', KEYS[i]) == -1 then
      redis.call('PEXPIRE', KEYS[i], v.ttl + TTL_SLACK)
    end
  end
  local n = #reply
  reply[n + 1] = v.allowed and 1 or 0
  reply[n + 2] = v.limit
  reply[n + 3] = remaining
  reply[n + 4] = v.reset
  reply[n + 5] = v.retry_after
end
return reply
