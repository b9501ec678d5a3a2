--[[
publish_reset.lua: records that an identity's counters were reset, so that
every instance forgets its cached denials of it (each reads the log every
second with resets_since.lua).

KEYS[1]  rate:{admin}:resets          sorted set: member = identity
                                      (<strategy>:<id>), score = sequence
KEYS[2]  rate:{admin}:resets:seq      the last sequence number handed out
KEYS[3]  rate:{admin}:resets:trimmed  the highest sequence trimmed away
ARGV[1]  the identity, <strategy>:<id>
ARGV[2]  entries to keep (older ones are trimmed)
ARGV[3]  ms the log lives after its last write

Reply: the new sequence number.

The three keys share the hash tag {admin}, so this runs in one Cluster slot.
An identity reset twice keeps one entry, with the later sequence number.
]]
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
local keep = tonumber(ARGV[2])
local excess = redis.call('ZCARD', KEYS[1]) - keep
if excess > 0 then
  local cut = redis.call('ZRANGE', KEYS[1], excess - 1, excess - 1, 'WITHSCORES')
  redis.call('SET', KEYS[3], cut[2])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
end
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  end
end
return seq
