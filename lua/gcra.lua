--[[
gcra.lua: the generic cell rate algorithm (leaky bucket as a meter), as a
module of check.lua.

One stored value per key: the theoretical arrival time (TAT), the moment the
meter would be empty, as an integer in microseconds since the Unix epoch
(a plain string key, readable with GET; read with the call's MGET, written
with one SET ... PX). The emission interval is
T = ceil(window x 1000 / limit) us, rounded up so the rate never exceeds
limit per window; the burst is `limit`: a request fits when

  max(TAT, now) + cost x T - now <= limit x T

and then TAT becomes max(TAT, now) + cost x T.

M.check(stored, limit, window, cost, now, debit) -> as in fixed_window.lua
(a debit moves the TAT by its cost even past the burst: the meter is then
more than full, and nothing fits until it has drained below the burst):
  remaining    whole requests that would still fit now
  reset        ms until the meter is empty (TAT reached), rounded up
  retry_after  ms until the same request fits, rounded up: a client that
               waits that long is allowed
]]

local M = {}

local function ceil_div(a, b)
  return math.floor((a + b - 1) / b)
end

function M.check(stored, limit, window, cost, now, debit)
  local interval = ceil_div(window * 1000, limit)
  local capacity = limit * interval
  local now_us = now * 1000

  -- A TAT this script could not have written (not a whole number, or more
  -- than one full burst ahead of now) is stale, like a missing key: it must
  -- not turn into an absurd retry_after.
  local tat = now_us
  if stored and string.match(stored, '^%d+$') then
    local t = tonumber(stored)
    -- A debit policy's meter may be far ahead (a large charge).
    if t > now_us and (t <= now_us + capacity or (debit and t < 2^53)) then tat = t end
  end

  local new_tat = tat + cost * interval
  if cost < 0 then
    -- A refund: the meter moves back, never before now (an empty meter).
    new_tat = math.max(now_us, new_tat)
  end
  if new_tat - now_us <= capacity then
    local ahead = ceil_div(new_tat - now_us, 1000)
    -- ttl = reset: an empty meter is a missing key. %d: an integer, never
    -- 1.79e+15.
    return true, math.floor((capacity - (new_tat - now_us)) / interval), ahead, 0, ahead,
      string.format('%d', new_tat)
  end
  if debit == true and cost > 0 then
    -- A debit: charged anyway; one unit fits again once the meter is back
    -- within the burst. The meter is capped where it stays exact (2^52 us
    -- is the year 2112: a debt beyond it never drains in practice).
    new_tat = math.min(new_tat, math.max(2^52, now_us + capacity))
    local ahead = ceil_div(new_tat - now_us, 1000)
    return false, 0, ahead, ceil_div(new_tat + interval - now_us - capacity, 1000), ahead,
      string.format('%d', new_tat)
  end
  local behind = ceil_div(tat - now_us, 1000)
  return false, math.max(0, math.floor((capacity - (tat - now_us)) / interval)), behind,
    ceil_div(new_tat - now_us - capacity, 1000), behind, nil
end

return M
