--[[
fixed_window.lua: the fixed-window counter, as a module of check.lua.

Windows are aligned to the Unix epoch (a 60 s window runs from hh:mm:00 to
hh:mm:59.999), so every instance and every retry agrees on which window a
request falls in. Known weakness: `limit` at the end of one window and
`limit` at the start of the next are 2 x limit within a few milliseconds.

Storage: KEY is a string "<window start ms> <units used>", read with one GET
and written with one SET ... PX (a hash would take a third call for the
expiry; every call inside a script costs about 2 us of Redis time here).
Keeping the window start in the value, instead of in the key name, means the
script never builds a key the caller did not declare (Redis Cluster forbids
that) and recognises a stale counter even before its TTL fires.

M.check(key, limit, window, cost, now) -> verdict
  key     the counter's key (declared in KEYS by the caller)
  limit   units per window, integer >= 1
  window  window length in ms, integer >= 1
  cost    units this request takes, integer >= 0 (0: read only)
  now     ms since the Unix epoch
verdict, the per-policy part of the common reply, plus a commit step:
  allowed      true if `cost` fits now
  remaining    units left after this request if allowed, else left now
  reset        ms until the window ends and the full limit is back
  retry_after  ms until the same request would fit; 0 if allowed
  ttl          ms for which the stored value still matters
  commit(px)   writes the charge, expiring in px ms; check.lua calls it only
               when every policy of the request allows (all-or-nothing), with
               px = ttl + a second of slack
]]

local M = {}

function M.check(key, limit, window, cost, now)
  local window_start = now - (now % window)
  local reset = window_start + window - now

  -- pcall: a key of another type under our prefix (left by something else)
  -- must not turn every request of this identity into a script error; it
  -- reads as empty, and the next SET replaces it.
  local used = 0
  local stored = redis.pcall('GET', key)
  if type(stored) == 'string' then
    local w, c = string.match(stored, '^(%d+) (%d+)$')
    -- A count beyond 2^53 was not written by this script: stale.
    if tonumber(w) == window_start and tonumber(c) < 2^53 then
      used = tonumber(c)
    end
  end

  local verdict, count = M.decide(used, limit, cost, reset)
  if count then
    verdict.commit = function(px)
      redis.call('SET', key, string.format('%d %d', window_start, count), 'PX', px)
    end
  end
  return verdict
end

-- The decision of a fixed window that has `used` units of `limit`, ending
-- in `reset` ms, for a request taking `cost`: the verdict without its
-- commit step, and the count that step must store (nil when denied). How
-- it is stored is the caller's: this module's "start count" strings,
-- ratelimit_fixed_window.lua's plain integers.
function M.decide(used, limit, cost, reset)
  if cost < 0 then
    -- A refund: give back up to what this window used, never below zero.
    local left = math.max(0, used + cost)
    return {
      allowed = true,
      remaining = math.max(0, limit - left),
      reset = reset,
      retry_after = 0,
      ttl = reset,
    }, left
  end

  if used + cost <= limit then
    return {
      allowed = true,
      remaining = limit - used - cost,
      reset = reset,
      retry_after = 0,
      ttl = reset, -- the counter dies with its window
    }, used + cost
  end
  -- max(): a limit lowered by a new configuration can be below what this
  -- window already used.
  return { allowed = false, remaining = math.max(0, limit - used), reset = reset, retry_after = reset, ttl = reset }
end

return M
