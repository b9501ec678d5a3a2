--[[
check.lua: the one script the service runs for its decisions (EVALSHA). One
call decides one check or several coalesced ones (the checks that were
waiting on one connection), in order, each as if it ran in a call of its
own: a check's writes are made before the next check reads, so two checks
of one identity in one call see each other exactly as two calls would.

A check covers every policy that applies to one request, all-or-nothing:
if any enforced policy denies, none is charged. A shadow policy is checked
and charged like the others but never blocks: its denial is reported, not
enforced, and only that policy goes uncharged. A debit policy is charged
whatever happens (a cost known after the response has been spent already).

The service loads it with the algorithm modules placed before it
(fixed_window.lua, sliding_window.lua, token_bucket.lua, gcra.lua,
ratelimit_fixed_window.lua), reached as ALGORITHMS[<name>] and built on
first use within a call (see src/redis/scripts.rs), so the SHA covers all
of them and a call builds only the modules it uses.

KEYS      the counters of every check, in order: check j's n_j keys follow
          check j-1's. The keys of one call share one Redis Cluster slot
          (a check's keys carry one hash tag, rate:{<subject>}:...; the
          service coalesces only checks of one slot on a Cluster).
ARGV      first the call's policies, each once (a call's checks mostly
          share a few: every argument costs Redis a parse and an
          allocation, and Lua an interned string):
          s          the number of distinct policies
          then six per policy j = 1..s:
          algorithm  fixed_window | sliding_window | token_bucket | gcra |
                     ratelimit_fixed_window
          limit      integer >= 1
          window     ms, integer >= 1
          cost       integer: > 0 charges, 0 reads only (a status), < 0
                     refunds (gives units back, never below an empty counter;
                     a refund is always allowed and always written)
          flags      the sum of: 1 shadow (report this policy's denial,
                     never enforce it); 2 debit (a charge always applies,
                     even past the limit and whatever the other policies
                     say, and a read (cost 0) asks whether one unit is
                     left: it is denied once the budget is spent). The
                     modules get `debit` as true for such a charge, 'read'
                     for such a read, false otherwise.
          lease      a concurrency lease's id, or empty
          then per check, in order, one of two forms:
          j          the common check: one policy, number j (1..s) above,
                     decided by the Redis server's clock; its counter is
                     the check's key. One argument, where the general form
                     takes three (every one is a parse and a string).
          *          the general form, followed by:
            now      ms since the Unix epoch, or empty to use the Redis
                     server's clock (TIME, read once per call). Only tests
                     pass it; reading the clock inside Redis makes
                     instances with skewed clocks agree.
            n        the number of policies of this check
            then per policy of the check, the number j (1..s) of its
            policy above; its counter is the check's next key.

Reply, an array of integers:
  now       the Redis server's clock (ms since the epoch) if a check used
            it, else 0 (every check's decision used its own `now`)
  then, per policy of every check, in order, two to four:
     word         code + 16 x remaining (whole units, 0 to 2^32 - 1), where
                  code is the sum of: 1 if this policy allowed; 2 if its
                  check is allowed (every enforced policy allowed, and the
                  policies that allowed were charged; else nothing was
                  charged); 4 if retry_after follows; 8 if expired follows
     reset        ms until full again
     retry_after  ms until this policy would allow, if not 0
     expired      concurrency: leases found expired without release, if any
  Most policies allow, so most take two integers: every value costs Redis
  a conversion and the client a parse. When a check is denied, `remaining`
  of the policies that would have allowed it is their level before the
  (uncharged) request. The caller knows each policy's limit and each
  check's `now` it passed: they are not repeated.

Cost in Redis: one MGET for every key of the call, one SET per charged
counter at the end of the call (a key charged by several checks of the call
is written once, with its last value), one TIME per call; the script body
itself runs once per call, so coalesced checks share it.
]]

-- Expiry only collects garbage: every stored value carries its own time
-- (window start, last refill, TAT), so a key read after it stopped mattering
-- is recognised as stale anyway. The slack keeps a key from vanishing
-- between two calls that a test's explicit clock places 1 ms apart while
-- real time moves on; it costs one second of memory per idle identity.
local TTL_SLACK = 1000

-- Every counter's value, read at once: false for a missing key or one of
-- another type (MGET reads those as nil), which the modules treat as empty
-- and the next SET replaces. A write updates it, so a later check of the
-- same key in this call reads what an own call would. In slices: unpack()
-- is bounded by Lua's stack.
local stored = {}
local nkeys = #KEYS
local first = 1
while first <= nkeys do
  local last = math.min(nkeys, first + 999)
  local values = redis.call('MGET', unpack(KEYS, first, last))
  for k = first, last do
    if stored[KEYS[k]] == nil then
      stored[KEYS[k]] = values[k - first + 1]
    end
  end
  first = last + 1
end

-- The charged counters' writes, made at the end of the call, once per key:
-- a key charged by several checks of a call (one hot identity's requests,
-- coalesced) costs one SET, not one per check, of its last value (`stored`
-- has each value at once, for the next check). `expiry`, by the index of
-- the charge's key in KEYS: the expiry to write (ms, or 'keep' for the
-- key's own, SET ... KEEPTTL). `set_expiry`, by key: an expiry a charge of
-- this call set (a new window's first charge, rare), which a later 'keep'
-- of the same key keeps: within a call time stands still.
local expiry, set_expiry = {}, {}

-- Charges a counter (or a module stores its own way, at once), or gives one
-- found without a TTL (a PERSIST, a write by another tool) one, so it
-- cannot pin its identity forever. Read before the call's writes, the TTL
-- is what they leave anyway: a SET ... PX replaces it, KEEPTTL keeps this.
local function settle(index, charged, value, ttl, px, module, now)
  local key = KEYS[index]
  if charged and module.store then
    module.store(key, value, ttl, px, now)
  elseif charged then
    if px == 'keep' then
      px = set_expiry[key] or 'keep'
    else
      px = px or (ttl + TTL_SLACK)
      set_expiry[key] = px
    end
    expiry[index] = px
    stored[key] = value
  elseif redis.call('PTTL', key) == -1 then
    redis.call('PEXPIRE', key, ttl + TTL_SLACK)
  end
end

-- The numbers of ARGV, each string parsed once per call: the checks of a
-- call repeat the same few (limits, windows, costs, flags), and Lua's
-- tonumber is a strtod.
local parsed = {}
local function num(s)
  local v = parsed[s]
  if v == nil then
    v = tonumber(s)
    parsed[s] = v
  end
  return v
end

local server_now
local reply, r = {0}, 1

-- Appends one policy's part of the reply (see above).
local function put(allowed, check_allowed, remaining, reset, retry, expired)
  local has_retry, has_expired = retry > 0, expired ~= nil and expired > 0
  local code = (allowed and 1 or 0) + (check_allowed and 2 or 0)
    + (has_retry and 4 or 0) + (has_expired and 8 or 0)
  remaining = remaining - remaining % 1 -- floor, without a call
  if remaining < 0 then
    remaining = 0
  elseif remaining > 4294967295 then
    remaining = 4294967295
  end
  reply[r + 1] = code + 16 * remaining
  reply[r + 2] = reset
  r = r + 2
  if has_retry then
    r = r + 1
    reply[r] = retry
  end
  if has_expired then
    r = r + 1
    reply[r] = expired
  end
end

-- The call's policies, each read once: by the argument that numbers it,
-- {module, limit, window, cost, flags, lease}.
local specs = {}
local nspecs = tonumber(ARGV[1]) or 0
for j = 1, nspecs do
  local s = 2 + 6 * (j - 1)
  local module = ALGORITHMS[ARGV[s]]
  if not module then
    return redis.error_reply('unknown algorithm ' .. tostring(ARGV[s]))
  end
  specs[tostring(j)] = { module, num(ARGV[s + 1]), num(ARGV[s + 2]), num(ARGV[s + 3]),
    num(ARGV[s + 4]), ARGV[s + 5] }
end
local a, k = 2 + 6 * nspecs, 0 -- the next ARGV, the keys used so far
local nargs = #ARGV
-- Per policy of a check of several: what its module said (made on first
-- use: most calls have none).
local allowed_, remaining_, reset_, retry_, ttl_, value_, px_, cost_, debit_, expired_, module_
-- The Redis server's clock, read once per call by the first check that
-- uses it.
local function server_clock()
  if not server_now then
    local t = redis.call('TIME')
    server_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    reply[1] = server_now
  end
  return server_now
end
while a <= nargs do
  -- The common check is its policy's number alone; the general form
  -- starts with '*'.
  local sp = specs[ARGV[a]]
  local now, n
  if sp then
    now, n = server_now or server_clock(), 1
    a = a + 1
  elseif ARGV[a] == '*' then
    now = tonumber(ARGV[a + 1]) or server_now or server_clock()
    n = num(ARGV[a + 2])
    a = a + 3
    if n == 1 then
      sp = specs[ARGV[a]]
      if not sp then
        return redis.error_reply('no policy ' .. tostring(ARGV[a]))
      end
      a = a + 1
    end
  else
    return redis.error_reply('no policy ' .. tostring(ARGV[a]))
  end

  if n == 1 then
    -- The common check, one policy: the same decision without the
    -- bookkeeping all-or-nothing needs (nothing else to wait for).
    local key = KEYS[k + 1]
    local algorithm, limit, cost, flags = sp[1], sp[2], sp[4], sp[5]
    local debit = flags >= 2
    local allowed, remaining, reset, retry, ttl, value, px, expired =
      algorithm.check(stored[key], limit, sp[3], (debit and cost == 0) and 1 or cost, now,
        (debit and cost == 0) and 'read' or debit, key, sp[6])
    if debit and cost == 0 and allowed then
      remaining = remaining + 1 -- a read: the unit asked about was not taken
    end
    settle(k + 1, (cost < 0 and value ~= nil) or ((allowed or debit) and cost > 0 and value ~= nil),
      value, ttl, px, algorithm, now)
    put(allowed, allowed or flags % 2 == 1, remaining, reset, retry, expired)
    k = k + 1
  else
    -- Several policies, all-or-nothing.
    if not allowed_ then
      allowed_, remaining_, reset_, retry_, ttl_, value_, px_, cost_, debit_, expired_, module_ =
        {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}
    end
    local all_allowed = true
    for i = 1, n do
      local sp = specs[ARGV[a]]
      if not sp then
        return redis.error_reply('no policy ' .. tostring(ARGV[a]))
      end
      local algorithm, limit, window, cost, flags = sp[1], sp[2], sp[3], sp[4], sp[5]
      local debit = flags >= 2
      local allowed
      allowed, remaining_[i], reset_[i], retry_[i], ttl_[i], value_[i], px_[i], expired_[i] =
        algorithm.check(stored[KEYS[k + i]], limit, window, (debit and cost == 0) and 1 or cost, now,
          (debit and cost == 0) and 'read' or debit, KEYS[k + i], sp[6])
      module_[i] = algorithm
      if debit and cost == 0 and allowed then
        remaining_[i] = remaining_[i] + 1
      end
      allowed_[i], cost_[i], debit_[i] = allowed, cost, debit
      if flags % 2 == 0 then
        all_allowed = all_allowed and allowed
      end
      a = a + 1
    end

    for i = 1, n do
      local cost, remaining = cost_[i], remaining_[i]
      local charged = cost > 0 and (debit_[i] or (all_allowed and allowed_[i]))
      settle(k + i, (cost < 0 or charged) and value_[i] ~= nil, value_[i], ttl_[i], px_[i],
        module_[i], now)
      if allowed_[i] and not charged and cost > 0 then
        remaining = remaining + cost -- nothing was taken
      end
      put(allowed_[i], all_allowed, remaining, reset_[i], retry_[i], expired_[i])
    end
    k = k + n
  end
end
-- Each charged key once, from its last charge: its final value.
for i = nkeys, 1, -1 do
  local px = expiry[i]
  if px then
    local key = KEYS[i]
    local value = stored[key]
    if value ~= true then
      if px == 'keep' then
        redis.call('SET', key, value, 'KEEPTTL')
      else
        redis.call('SET', key, value, 'PX', px)
      end
      stored[key] = true -- written
    end
  end
end
return reply
