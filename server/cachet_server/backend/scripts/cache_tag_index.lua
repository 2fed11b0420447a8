#!lua
-- Add a user key to a tag's index and make the index live at least as long as asked.
-- KEYS: the tag index (a set of user keys).
-- ARGV: user key, ttl_ms the index must at least live (-1: keep it without TTL, for a
--       persisted member).
-- The index only ever lives longer, never shorter: it must outlive every member.
local index, member, ttl_ms = KEYS[1], ARGV[1], tonumber(ARGV[2])
local existed = redis.call('EXISTS', index) == 1
redis.call('SADD', index, member)
if ttl_ms < 0 then
  redis.call('PERSIST', index)
  return 1
end
local pttl = redis.call('PTTL', index)
if not existed or (pttl >= 0 and pttl < ttl_ms) then
  redis.call('PEXPIRE', index, ttl_ms)
end
return 1
