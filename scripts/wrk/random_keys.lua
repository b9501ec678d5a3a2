-- wrk script: POST /api/resource with an X-API-Key out of KEYS distinct keys
-- (default 10000), so counters spread over many keys.
--   KEYS=10000 wrk -s scripts/wrk/random_keys.lua http://127.0.0.1:8000/api/resource
-- KEY_PREFIX names the key family (default "bench"); ORDER=sequential walks
-- the keys in order (every key is used once per KEYS requests per thread),
-- ORDER=random (default) draws them at random. Every POST carries a JSON
-- body, as clients send them: a small order by default, BODY when set (a
-- denied client that sends bodies must not cost a new connection per
-- request).
local keys = tonumber(os.getenv("KEYS") or "10000")
local prefix = os.getenv("KEY_PREFIX") or "bench"
local sequential = os.getenv("ORDER") == "sequential"
local body = os.getenv("BODY")
-- FORWARD=1: ask forward-auth about POST /v1/orders/<n> instead (a gateway's
-- question), with the key of the original request.
local forward = os.getenv("FORWARD") == "1"
-- GET=1: the same work per request, sent as a GET without a body (for
-- GET /livez with the client cost of the POST cases: bench.sh's livez-same).
local get = os.getenv("GET") == "1"
local counter = 0
local thread_id = 0
local next_id = 0
-- Every request this thread can send, made once in init(): building one per
-- request (a header table, concatenations, wrk.format) cost the client about
-- 2 us of CPU per request more than plain wrk's, on the cores the service
-- shares, so the POST cases' throughput measured the client as much as the
-- service. request() now only picks one.
local requests = {}

function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
  thread:set("seed", math.random(1, 1e9))
end

local function build(n)
  local headers = { ["X-API-Key"] = prefix .. "-" .. n }
  if forward then
    headers["X-Forwarded-Method"] = "POST"
    headers["X-Forwarded-Uri"] = "/v1/orders/" .. n
    return wrk.format("GET", nil, headers)
  end
  headers["Content-Type"] = "application/json"
  local payload = body or ('{"item": "sku-' .. n .. '", "quantity": 1}')
  if get then
    return wrk.format("GET", nil, headers)
  end
  return wrk.format("POST", nil, headers, payload)
end

function init(args)
  math.randomseed(seed or os.time())
  counter = thread_id or 0
  for n = 1, keys do
    requests[n] = build(n)
  end
end

request = function()
  if sequential then
    counter = counter + 1
    return requests[counter % keys + 1]
  end
  return requests[math.random(1, keys)]
end
