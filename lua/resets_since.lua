--[[
resets_since.lua: the identities reset after a sequence number (see
publish_reset.lua for the keys).

KEYS[1..3]  as in publish_reset.lua
ARGV[1]     the last sequence number this reader has seen

Reply: { latest sequence (0 if none), highest trimmed sequence (0 if none),
         { identities reset after ARGV[1] } }
]]
local latest = tonumber(redis.call('GET', KEYS[2]) or '0')
local trimmed = tonumber(redis.call('GET', KEYS[3]) or '0')
local keys = {}
if tonumber(ARGV[1]) < latest then
  keys = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
end
return { latest, trimmed, keys }
