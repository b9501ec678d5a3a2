--[[
fixed_window.lua: the fixed-window counter, as a module of check.lua.

Windows are aligned to the Unix epoch (a 60 s window runs from hh:mm:00 to
hh:mm:59.999), so every instance and every retry agrees on which window a
request falls in. Known weakness: `limit` at the end of one window and
`limit` at the start of the next are 2 x limit within a few milliseconds.

Storage: KEY is a string "<window start ms> <units used>", read with the
MGET of every key of a call and written with one SET ... PX (a hash would
take another call for the expiry; every call inside a script costs about
1.5 us of Redis time here).
Keeping the window start in the value, instead of in the key name, means the
script never builds a key the caller did not declare (Redis Cluster forbids
that) and recognises a stale counter even before its TTL fires. A value is
this window's when it starts with "<this window's start> " followed by a
count (what Lua's tonumber reads there: a whole number from 0 to below
2^53); anything else is stale (the window's
prefix is formatted once per call, and a value is matched against it
without a pattern: parsing and formatting with patterns cost about
0.4 us of Redis time per check).

M.check(stored, limit, window, cost, now, debit)
    -> allowed, remaining, reset, retry_after, ttl, value [, px]
  stored  the key's value (a string), or false when it has none (missing,
          or a key of another type: it reads as empty and the next SET
          replaces it)
  limit   units per window, integer >= 1
  window  window length in ms, integer >= 1
  cost    units this request takes, integer (0: read only, < 0: a refund)
  now     ms since the Unix epoch
  debit   true for a debit policy: a charge that does not fit is still
          counted (the budget goes past its limit, and the next requests
          are denied until it has drained); `allowed` says whether it fit
Plain values, no table and no closure per call (Redis runs the script body,
and so every allocation in it, on each call). The per-policy part of the
common reply, plus what check.lua writes:
  allowed      true if `cost` fits now
  remaining    units left after this request if allowed, else left now
  reset        ms until the window ends and the full limit is back
  retry_after  ms until the same request would fit; 0 if allowed
  ttl          ms for which the stored value still matters
  value        the string to store if the request is charged, nil when it
               is denied (but for a debit); check.lua writes it only when
               every policy of the request allows (all-or-nothing), or for
               a debit always, with SET ... PX px
  px           the expiry to write; nil means ttl + a second of slack;
               'keep' keeps the key's own (SET ... KEEPTTL: a later write
               of the window whose first write set it). A key another tool
               made persistent mid-window stays so until a write of a later
               window sets an expiry again.
]]

local M = {}

-- The "<window start> " prefix of each window start seen in this call:
-- the checks of a call share a few, and formatting a number is a sprintf.
local prefixes = {}

function M.check(stored, limit, window, cost, now, debit)
  local window_start = now - (now % window)
  local reset = window_start + window - now
  local prefix = prefixes[window_start]
  if not prefix then
    prefix = string.format('%d ', window_start)
    prefixes[window_start] = prefix
  end

  local used, same = 0, false
  -- This window's value starts with its prefix; any other is stale.
  if stored and string.find(stored, prefix, 1, true) == 1 then
    local c = tonumber(string.sub(stored, #prefix + 1))
    -- A count beyond 2^53 was not written by this script: stale.
    if c and c >= 0 and c < 2^53 and c % 1 == 0 then
      used, same = c, true
    end
  end

  local allowed, remaining, retry_after, count = M.decide(used, limit, cost, reset, debit)
  local value
  if count then
    -- Lua writes a whole number below 10^14 as its digits ("%.14g"),
    -- without the call string.format costs.
    value = prefix .. (count < 1e14 and count or string.format('%d', count))
  end
  return allowed, remaining, reset, retry_after, reset, value, same and 'keep' or nil
end

-- The decision of a fixed window that has `used` units of `limit`, ending
-- in `reset` ms, for a request taking `cost`: allowed, remaining,
-- retry_after, and the count to store (nil when denied, but for a debit). How it is stored
-- is the caller's: this module's "start count" strings,
-- ratelimit_fixed_window.lua's plain integers.
function M.decide(used, limit, cost, reset, debit)
  if cost < 0 then
    -- A refund: give back up to what this window used, never below zero.
    local left = math.max(0, used + cost)
    return true, math.max(0, limit - left), 0, left
  end
  if used + cost <= limit then
    return true, limit - used - cost, 0, used + cost
  end
  if debit == true and cost > 0 then
    -- A debit: counted past the limit; the window must end first.
    return false, 0, reset, used + cost
  end
  -- max(): a limit lowered by a new configuration can be below what this
  -- window already used.
  return false, math.max(0, limit - used), reset, nil
end

return M
