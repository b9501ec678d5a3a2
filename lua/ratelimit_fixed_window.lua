--[[
ratelimit_fixed_window.lua: envoyproxy/ratelimit's fixed window, with its
keys and values, as a module of check.lua (ENVOY_KEY_FORMAT=ratelimit).

The key is envoyproxy/ratelimit's own, `<CACHE_KEY_PREFIX><domain>_<k1>_<v1>
..._<window start>`, named by the caller; the value a plain integer count,
so this service and envoyproxy/ratelimit pointed at one Redis count
together during a migration. Unlike envoyproxy/ratelimit (INCRBY then
EXPIRE, pipelined), the count and its expiry are written in one script, so
a key never lives without a TTL, and a denied request adds nothing.

M.check(key, limit, window, cost, now) -> verdict: as fixed_window.lua.
]]

local M = {}

function M.check(key, limit, window, cost, now)
  local window_start = now - (now % window)
  local reset = window_start + window - now
  local used = 0
  local stored = redis.pcall('GET', key)
  if type(stored) == 'string' then
    local n = tonumber(stored)
    if n and n >= 0 and n < 2^53 and n == math.floor(n) then
      used = n
    end
  end
  -- The key holds one window: it expires with it (envoyproxy/ratelimit
  -- sets the unit, plus jitter).
  local ttl_seconds = math.max(1, math.ceil(window / 1000))
  local function write(count)
    return function()
      redis.call('SET', key, string.format('%d', count), 'EX', ttl_seconds)
    end
  end
  if cost < 0 then
    local left = math.max(0, used + cost)
    return { allowed = true, remaining = math.max(0, limit - left), reset = reset, retry_after = 0,
             ttl = reset, commit = write(left) }
  end
  if used + cost <= limit then
    return { allowed = true, remaining = limit - used - cost, reset = reset, retry_after = 0,
             ttl = reset, commit = write(used + cost) }
  end
  return { allowed = false, remaining = math.max(0, limit - used), reset = reset, retry_after = reset, ttl = reset }
end

return M
