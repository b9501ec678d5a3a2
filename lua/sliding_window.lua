--[[
sliding_window.lua: the weighted two-window counter, as a module of check.lua.

The count of the sliding window ending now is estimated from two fixed
(epoch-aligned) windows: the previous window's count, weighted by the part
of it still inside the sliding window, plus the current window's count:

  estimate = floor(previous * (window - elapsed) / window) + current

where `elapsed` is the time since the current window started. A request fits
when estimate + cost <= limit.

Bound: no fixed window ever counts more than `limit`, so no span of one
window admits more than 2 x limit, and only when the second half arrives at
the very end of the next window. Right after a window that ended with a
burst of `limit`, at most ceil(limit x e / window) more get through within e
ms of the edge (the fixed window would let another `limit` through at once).
tests/algorithms.rs measures it.

Storage: KEY is a string "<current window start ms> <its count> <previous
window's count>" (read with the call's MGET, written with one SET ... PX). One key, so both counters always
share the identity's hash tag.

M.check(stored, limit, window, cost, now, debit) -> as in fixed_window.lua:
  reset        ms until the estimate is 0 again (the full limit is back)
  retry_after  the exact ms until the same request fits, from the formula
               above (the weighted part shrinks every millisecond)
Integers only: limit x window must stay below 2^53 (checked at config load).
]]

local M = {}

-- Smallest d >= 0 such that floor(count * (span - d) / window) <= room,
-- i.e. count * (span - d) <= (room + 1) * window - 1.
local function decay_until(count, span, window, room)
  if count == 0 then return 0 end
  return math.max(0, span - math.floor(((room + 1) * window - 1) / count))
end

-- ms until the estimate reaches 0 for these counts, `rest` ms before the
-- current window ends.
local function until_empty(cur, prev, rest, window)
  if cur > 0 then
    return rest + decay_until(cur, window, window, 0)
  end
  return decay_until(prev, rest, window, 0)
end

function M.check(stored, limit, window, cost, now, debit)
  local current_start = now - (now % window)
  local rest = current_start + window - now -- ms left in the current window

  local current, previous = 0, 0
  if stored then
    local w, c, p = string.match(stored, '^(%d+) (%d+) (%d+)$')
    w = tonumber(w)
    -- Counts beyond 2^53 were not written by this script: stale.
    if w and (tonumber(c) >= 2^53 or tonumber(p) >= 2^53) then
      w = nil
    end
    if w == current_start then
      current, previous = tonumber(c), tonumber(p)
    elseif w == current_start - window then
      previous = tonumber(c)
    end
  end

  if cost < 0 then
    -- A refund: give back up to this window's count, never below zero (the
    -- previous window is history).
    local left = math.max(0, current + cost)
    return true, math.max(0, limit - math.floor(previous * rest / window) - left),
      until_empty(left, previous, rest, window), 0,
      rest + window, string.format('%d %d %d', current_start, left, previous)
  end

  local estimate = math.floor(previous * rest / window) + current

  if estimate + cost <= limit then
    -- ttl: the current count weighs on the next window too.
    return true, limit - estimate - cost, until_empty(current + cost, previous, rest, window), 0,
      rest + window, string.format('%d %d %d', current_start, current + cost, previous)
  end

  if debit == true and cost > 0 then
    -- A debit: counted past the limit; the next unit fits once the
    -- estimate has decayed below the limit.
    local charged = current + cost
    local estimate2 = math.floor(previous * rest / window) + charged
    local room = limit - charged - 1
    local retry
    if room >= 0 then
      retry = decay_until(previous, rest, window, room)
    else
      retry = rest + decay_until(charged, window, window, limit - 1)
    end
    return false, math.max(0, limit - estimate2), until_empty(charged, previous, rest, window),
      retry, rest + window, string.format('%d %d %d', current_start, charged, previous)
  end

  local retry_after
  local room = limit - current - cost
  if room >= 0 then
    -- Fits within this window once the previous window's weight has decayed.
    retry_after = decay_until(previous, rest, window, room)
  else
    -- Only in the next window, once this window's count (then "previous")
    -- has decayed enough.
    retry_after = rest + decay_until(current, window, window, limit - cost)
  end
  return false, math.max(0, limit - estimate), until_empty(current, previous, rest, window),
    retry_after, rest + window, nil
end

return M
