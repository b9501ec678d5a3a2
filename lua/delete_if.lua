--[[
delete_if.lua: removes a hash field only if it still holds a given value
(an expired override, unless an admin replaced it since it was read).

KEYS[1]  the hash
ARGV[1]  the field
ARGV[2]  the value it must hold

Reply: 1 if the field was removed, else 0.
]]
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
