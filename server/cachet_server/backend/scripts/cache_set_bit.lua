#!lua
-- Set one bit, creating the value with a TTL when absent.
-- KEYS: data, meta, lease. ARGV: offset, bit (0/1), ttl_ms. Answers the previous bit.
local data, meta, lease = KEYS[1], KEYS[2], KEYS[3]
local created = redis.call('EXISTS', data) == 0
local previous = redis.call('SETBIT', data, ARGV[1], ARGV[2])
if created then redis.call('PEXPIRE', data, ARGV[3]) end
cachet_void_lease(lease)
cachet_touch(data, meta)
return previous
