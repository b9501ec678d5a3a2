--[[
concurrency.lua: requests in flight, as a module of check.lua. At most
`limit` holders at once per subject; each holds a lease that expires on its
own `ttl` ms after it was taken or last renewed, so a holder that dies
frees its slot within the TTL.

Storage: KEY is a sorted set of lease ids scored by their expiry (ms since
the epoch). Expired leases are removed (and counted: leases that expired
without release, the leak counter) whenever the key is checked; the key
itself expires with its last lease. Every call is one script run on one
key, with Redis's clock: N holders at most, never N+1, whatever the
interleaving.

M.check(stored, limit, ttl, cost, now, debit, key, lease)
  cost > 0   acquire `lease` (one slot, whatever the cost): allowed when a
             slot is free; the lease is written by M.store only if the
             whole check allows (all-or-nothing). A lease already held is
             renewed instead (an acquire is idempotent).
  cost = 0   with a lease: renew it (allowed while it is held; denied once
             it expired or was released); without: is a slot free?
  cost < 0   release: the lease, or without one the lease that expires
             first (Envoy's negative hit without a request id); allowed
             says whether a lease was freed
  -> allowed, remaining (free slots), reset (ms until the last lease
     expires), retry_after (ms until the first lease expires, when full),
     ttl, value (the lease to store), px, expired (leases found expired)
]]

local M = {}

local function until_last(key, now)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then return math.max(0, tonumber(last[2]) - now) end
  return 0
end

function M.check(stored, limit, ttl, cost, now, debit, key, lease)
  local expired = redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local held = redis.call('ZCARD', key)
  if cost < 0 then
    -- allowed: whether a lease was freed (a lease already gone frees none).
    local freed = 0
    if lease ~= '' then
      freed = redis.call('ZREM', key, lease)
    elseif held > 0 then
      redis.call('ZPOPMIN', key, 1)
      freed = 1
    end
    held = held - freed
    return freed > 0, math.max(0, limit - held), until_last(key, now), 0, ttl, nil, nil, expired
  end
  if lease ~= '' and redis.call('ZSCORE', key, lease) then
    -- Held: renewed (an acquire of a lease already held is one too).
    redis.call('ZADD', key, 'XX', now + ttl, lease)
    redis.call('PEXPIRE', key, ttl + 1000)
    return true, math.max(0, limit - held), until_last(key, now), 0, ttl, nil, nil, expired
  end
  if cost == 0 and lease ~= '' then
    -- A renewal of a lease that is gone: the holder lost its slot.
    return false, math.max(0, limit - held), until_last(key, now), 0, ttl, nil, nil, expired
  end
  local retry = 0
  if held >= limit then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    retry = first[2] and math.max(1, tonumber(first[2]) - now) or ttl
  end
  if cost == 0 then
    return held < limit, math.max(0, limit - held), until_last(key, now), retry, ttl, nil, nil, expired
  end
  if held < limit then
    return true, limit - held - 1, ttl, 0, ttl, lease, nil, expired
  end
  return false, 0, until_last(key, now), retry, ttl, nil, nil, expired
end

-- Writes an acquired lease (check.lua calls it instead of SET).
function M.store(key, value, ttl, px, now)
  redis.call('ZADD', key, now + ttl, value)
  redis.call('PEXPIRE', key, ttl + 1000)
end

return M
