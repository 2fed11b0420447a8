#!lua
-- Add to a counter, creating it with a TTL when absent.
-- KEYS: data, meta, lease, remembered (where the result of a request with a
-- request_id is kept; any key of the slot when there is none).
-- ARGV: 'int' or 'float', delta, ttl_ms, how long to remember the result in ms
-- ('' = the request has no request_id).
-- Answers {new value (as a string), created (0/1), version}; a request whose
-- result is remembered answers that result again and adds nothing.
local data, meta, lease, remembered = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window_ms = ARGV[4]
if window_ms ~= '' then
  local earlier = cachet_recall(remembered)
  if earlier then return earlier end
end
local created = 1 - redis.call('EXISTS', data)
if ARGV[1] == 'int' then
  redis.call('INCRBY', data, ARGV[2])
else
  local refused = cachet_check_float_sum(redis.call('GET', data), ARGV[2])
  if refused then return refused end
  redis.call('INCRBYFLOAT', data, ARGV[2])
end
-- Read the result back as stored: INCRBY's reply becomes a Lua double, which
-- loses digits above 2^53.
local value = redis.call('GET', data)
if created == 1 then redis.call('PEXPIRE', data, ARGV[3]) end
cachet_void_lease(lease)
local reply = {value, created, cachet_touch(data, meta)}
if window_ms ~= '' then cachet_remember(remembered, window_ms, reply) end
return reply
