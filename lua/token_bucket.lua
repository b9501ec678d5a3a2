--[[
token_bucket.lua: the token bucket, as a module of check.lua.

A bucket holds up to `limit` tokens and refills continuously at
limit / window tokens per ms; a request takes `cost` tokens if there are that
many. There is no refill job: the level is brought up to date from the time
elapsed whenever the key is read.

Exact integer arithmetic: the level is stored in units of 1/window token,
so the refill is exactly `limit` units per ms and the capacity is
limit x window units (which must stay below 2^53, checked at config load).

Storage: KEY is a string "<level in 1/window tokens> <when it was measured,
ms>" (read with the call's MGET, written with one SET ... PX). A missing key is a full bucket; the TTL is
the time until the bucket is full again, after which the key would say
nothing new.

M.check(stored, limit, window, cost, now, debit) -> as in fixed_window.lua
(a debit takes its tokens even when there are not that many: the level goes
below zero, stored with its sign, and refills from there):
  remaining    whole tokens left
  reset        ms until the bucket is full
  retry_after  ms until `cost` tokens are there
]]

local M = {}

local function ceil_div(a, b)
  return math.floor((a + b - 1) / b)
end

function M.check(stored, limit, window, cost, now, debit)
  local capacity = limit * window
  local level = capacity

  if stored then
    local l, t = string.match(stored, '^(%-?%d+) (%d+)$')
    l, t = tonumber(l), tonumber(t)
    -- A measurement more than a window in the future was not written by
    -- this script (a clock step back is far smaller): it is stale, or it
    -- would keep the bucket from refilling until then.
    if l and t and l < 2^53 and l > -2^53 and t <= now + window then
      local elapsed = math.max(0, now - t) -- a clock that stepped back refills nothing
      if elapsed >= window and l >= 0 then
        level = capacity -- also keeps elapsed x limit far from 2^53
      else
        level = math.min(capacity, l + elapsed * limit)
      end
    end
  end

  local need = cost * window
  if cost < 0 then
    -- A refund: tokens back, never above a full bucket.
    local after = math.min(capacity, level - need)
    local reset = ceil_div(capacity - after, limit)
    return true, math.floor(after / window), reset, 0, reset, string.format('%d %d', after, now)
  end
  if level >= need then
    local after = level - need
    local reset = ceil_div(capacity - after, limit)
    -- ttl = reset: a full bucket is a missing key.
    return true, math.floor(after / window), reset, 0, reset, string.format('%d %d', after, now)
  end
  if debit == true and cost > 0 then
    -- A debit: taken anyway; the next token is there once the level is
    -- back to one.
    -- The deficit is capped where a stored level stays exact (2^52 units
    -- take longer than any window to refill).
    local after = math.max(level - need, -2^52)
    local reset = ceil_div(capacity - after, limit)
    return false, math.max(0, math.floor(after / window)), reset,
      ceil_div(window - after, limit), reset, string.format('%d %d', after, now)
  end
  local reset = ceil_div(capacity - level, limit)
  return false, math.max(0, math.floor(level / window)), reset, ceil_div(need - level, limit), reset, nil
end

return M
