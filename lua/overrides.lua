--[[
overrides.lua: every change to the admin overrides every instance shares,
with the hash's version bumped in the same atomic step, so that instances
reread the whole hash only when it changed (one HGET of the version a
second, instead of every override by every instance). And the hash is
bounded: a new override is refused once it holds the most allowed.

KEYS[1]  the overrides hash
ARGV[1]  the operation: set | del | del_if
ARGV[2]  the field (an identity's storage key)
ARGV[3]  set: the override's JSON; del_if: the value it must still hold
ARGV[4]  set: the most overrides the hash may hold

Reply: set: 1 stored, 0 refused (the hash is full); del and del_if: 1
removed, 0 not (del_if: an admin replaced it since it was read).
]]
local VERSION = '~version'
local hash, op, field = KEYS[1], ARGV[1], ARGV[2]
local done = 0
if op == 'set' then
  if redis.call('HEXISTS', hash, field) == 0 then
    local stored = redis.call('HLEN', hash) - redis.call('HEXISTS', hash, VERSION)
    if stored >= tonumber(ARGV[4]) then
      return 0
    end
  end
  redis.call('HSET', hash, field, ARGV[3])
  done = 1
elseif op == 'del' then
  done = redis.call('HDEL', hash, field)
elseif op == 'del_if' then
  if redis.call('HGET', hash, field) == ARGV[3] then
    done = redis.call('HDEL', hash, field)
  end
end
if done == 1 then
  redis.call('HINCRBY', hash, VERSION, 1)
end
return done
