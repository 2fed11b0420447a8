#!lua
-- Create a consumer group and record its dead-letter policy, in one step.
-- KEYS[1] the stream; KEYS[2] its policy hash (absent for a dead-letter stream).
-- ARGV[1] group, ARGV[2] start id, ARGV[3] '1' to create a missing stream,
-- ARGV[4] '1' if an existing group is fine, ARGV[5] policy "<max deliveries>:<max len>"
-- or '' for none.
-- Returns 1 created, 0 existed (allowed), -1 no stream, -2 group exists.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  if ARGV[3] ~= '1' then
    return -1
  end
elseif kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local args = {'XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2]}
if ARGV[3] == '1' then
  args[#args + 1] = 'MKSTREAM'
end
local reply = redis.pcall(unpack(args))
if type(reply) == 'table' and reply.err then
  if string.sub(reply.err, 1, 9) == 'BUSYGROUP' then
    if ARGV[4] == '1' then
      return 0
    end
    return -2
  end
  return redis.error_reply(reply.err)
end
if KEYS[2] then
  if ARGV[5] ~= '' then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
  else
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
end
return 1
