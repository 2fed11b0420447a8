-- Add to a counter, creating it with a TTL when absent.
-- KEYS: data, meta, lease. ARGV: 'int' or 'float', delta, ttl_ms.
-- Answers {new value (as a string), created (0/1), version}.
local data, meta, lease = KEYS[1], KEYS[2], KEYS[3]
local created = 1 - redis.call('EXISTS', data)
if ARGV[1] == 'int' then
  redis.call('INCRBY', data, ARGV[2])
else
  redis.call('INCRBYFLOAT', data, ARGV[2])
end
-- Read the result back as stored: INCRBY's reply becomes a Lua double, which
-- loses digits above 2^53.
local value = redis.call('GET', data)
if created == 1 then redis.call('PEXPIRE', data, ARGV[3]) end
cachet_void_lease(lease)
return {value, created, cachet_touch(data, meta)}
