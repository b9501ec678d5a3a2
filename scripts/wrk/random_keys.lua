-- wrk script: POST /api/resource with an X-API-Key drawn at random from
-- KEYS distinct keys (default 10000), so counters spread over many keys.
--   wrk -s scripts/wrk/random_keys.lua http://127.0.0.1:8000/api/resource
local keys = tonumber(os.getenv("KEYS") or "10000")
local prefix = os.getenv("KEY_PREFIX") or "bench"

function setup(thread)
  thread:set("seed", math.random(1, 1e9))
end

function init(args)
  math.randomseed(seed or os.time())
end

request = function()
  local key = prefix .. "-" .. math.random(1, keys)
  return wrk.format("POST", nil, { ["X-API-Key"] = key })
end
