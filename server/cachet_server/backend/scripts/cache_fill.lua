#!lua
-- Store a value under a fill lease granted by cache_get_or_lease.
-- KEYS: data, meta, lease, stale.
-- ARGV: lease token, value, ttl_ms, stale_ttl_ms ('0' = keep no stale copy),
--       recompute_ms ('' = none), tags (newline-joined, '' = none).
-- Answers {'OK', version, pttl}, or {'LEASE_LOST'} when the lease is not this
-- caller's any more (expired, or voided by a write, Delete or invalidation).
local data, meta, lease, stale = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, value, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stale_ms, recompute_ms, tags = tonumber(ARGV[4]), ARGV[5], ARGV[6]

if redis.call('GET', lease) ~= token then return {'LEASE_LOST'} end
-- Refuses (WRONGTYPE) to replace a collection that appeared since the lease was granted.
redis.call('GET', data)
cachet_void_lease(lease)
redis.call('SET', data, value, 'PX', ttl_ms)
if stale_ms > 0 then
  -- Written now with the value's TTL plus the stale TTL, the copy outlives a value
  -- that simply expires; a Delete or invalidation rewrites it (cachet_delete_entry).
  redis.call('SET', stale, value, 'PX', ttl_ms + stale_ms)
  redis.call('HSET', meta, 's', stale_ms)
else
  redis.call('DEL', stale)
  redis.call('HDEL', meta, 's')
end
if recompute_ms ~= '' then
  redis.call('HSET', meta, 'r', recompute_ms)
else
  redis.call('HDEL', meta, 'r')
end
if tags ~= '' then
  redis.call('HSET', meta, 't', tags)
else
  redis.call('HDEL', meta, 't')
end
return {'OK', cachet_touch(data, meta), redis.call('PTTL', data)}
