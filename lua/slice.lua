--[[
slice.lua: quota slices (see src/limiter/slices.rs). An instance takes a
slice of what is left of one counter, spends it without Redis, and gives
back what it did not spend. The counter counts what was taken, so the sum
admitted over every instance never exceeds the limit: a slice an instance
never gives back (it crashed) is simply spent as far as Redis knows.

Loaded with the algorithm modules before it, as check.lua is, and reading
and writing a counter exactly as check.lua does: a sliced and an unsliced
check of one counter see each other (a take is a charge of its size; a
give-back is a refund).

KEYS[1]   the counter
KEYS[2]   its epoch: the Redis time (us) at which the counter's slices began.
          An admin reset deletes both, so a slice taken before the reset is
          never given back into the counter after it.
ARGV      op         take | give
          algorithm  fixed_window | token_bucket | gcra
          limit      integer >= 1
          window     ms, integer >= 1
          need       take: units the slice must hold at least (the cost of
                     the request waiting for it); give: units given back
          want       take: the size asked (from the instance's own rate)
          share      take: never more than 1/share of what is left (at
                     least need), so the last units of a window are taken
                     in ever smaller slices and no instance strands many
          epoch      give: the epoch the slice was taken in
          until      give: ms (Redis clock) after which the slice is void
                     (a fixed window's end: a unit of one window must not be
                     given back into the next); 0 for never
          now        ms since the epoch, or empty for Redis TIME (tests)

Reply: take: {granted, now, remaining, reset, retry_after, epoch}
         granted 0 when fewer than need are left; remaining what is left in
         Redis after the slice; retry_after until need units are there
       give: {given, now}
]]

local op, algorithm = ARGV[1], ALGORITHMS[ARGV[2]]
if not algorithm or algorithm.store then
  return redis.error_reply('slices: unknown algorithm ' .. tostring(ARGV[2]))
end
local limit, window, need = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(ARGV[10])
if not now then
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The epoch outlives every slice of the counter's window (slices live at
-- most a second), then goes with it.
local epoch_px = window + 10000

local stored = redis.call('GET', KEYS[1])
local epoch = redis.call('GET', KEYS[2])

local function write(value, ttl, px)
  if value ~= nil and px == 'keep' then
    redis.call('SET', KEYS[1], value, 'KEEPTTL')
  elseif value ~= nil then
    redis.call('SET', KEYS[1], value, 'PX', px or (ttl + 1000))
  end
end

if op == 'take' then
  if not epoch then
    epoch = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  end
  redis.call('SET', KEYS[2], epoch, 'PX', epoch_px)
  local want, share = tonumber(ARGV[6]), tonumber(ARGV[7])
  local _, left = algorithm.check(stored, limit, window, 0, now, false)
  if left < need then
    local _, _, reset1, retry = algorithm.check(stored, limit, window, need, now, false)
    return {0, now, left, reset1, retry, tonumber(epoch)}
  end
  local n = math.min(want, math.max(need, math.floor(left / share)))
  local allowed, remaining, reset2, _, ttl, value, px = algorithm.check(stored, limit, window, n, now, false)
  if not allowed then
    return redis.error_reply('slices: a take of what is left was refused')
  end
  write(value, ttl, px)
  return {n, now, remaining, reset2, 0, tonumber(epoch)}
end

if op == 'give' then
  local until_ms = tonumber(ARGV[9])
  if epoch ~= ARGV[8] or (until_ms > 0 and now >= until_ms) or need <= 0 then
    return {0, now}
  end
  local _, _, _, _, ttl, value, px = algorithm.check(stored, limit, window, -need, now, false)
  write(value, ttl, px)
  return {need, now}
end

return redis.error_reply('slices: unknown op ' .. tostring(op))
