-- Destroy a consumer group with its dead-letter policy.
-- KEYS[1] the stream; KEYS[2] its policy hash (absent for a dead-letter stream).
-- ARGV[1] group. Returns 1 if the group existed, else 0.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return 0
elseif kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local destroyed = redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
if KEYS[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return destroyed
