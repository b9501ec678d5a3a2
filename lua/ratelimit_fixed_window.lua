--[[
ratelimit_fixed_window.lua: envoyproxy/ratelimit's fixed window, with its
keys and values, as a module of check.lua (ENVOY_KEY_FORMAT=ratelimit).

The key is envoyproxy/ratelimit's own, `<CACHE_KEY_PREFIX><domain>_<k1>_<v1>
..._<window start>`, named by the caller; the value a plain integer count,
so this service and envoyproxy/ratelimit pointed at one Redis count
together during a migration. Unlike envoyproxy/ratelimit (INCRBY then
EXPIRE, pipelined), the count and its expiry are written in one script, so
a key never lives without a TTL, and a denied request adds nothing.

M.check(stored, limit, window, cost, now) -> as fixed_window.lua, whose
decision it shares (M.decide).
]]

local M = {}

function M.check(stored, limit, window, cost, now, debit)
  local window_start = now - (now % window)
  local reset = window_start + window - now
  local used = 0
  if stored then
    local n = tonumber(stored)
    if n and n >= 0 and n < 2^53 and n == math.floor(n) then
      used = n
    end
  end
  -- The key holds one window: it expires with it (envoyproxy/ratelimit
  -- sets the unit, plus jitter).
  local px = math.max(1, math.ceil(window / 1000)) * 1000
  -- The decision is fixed_window.lua's.
  local allowed, remaining, retry_after, count = ALGORITHMS['fixed_window'].decide(used, limit, cost, reset, debit)
  return allowed, remaining, reset, retry_after, reset, count and string.format('%d', count), px
end

return M
