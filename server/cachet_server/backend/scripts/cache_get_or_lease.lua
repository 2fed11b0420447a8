-- Read a value, or lease the right to fill it (memcache-style leases).
-- KEYS: data, meta, lease, stale.
-- ARGV: a fresh lease token, lease_ttl_ms, accept_stale ('0'/'1').
-- Answers {'HIT', value, version}, {'GRANTED'} when this caller now holds the lease,
-- or {'PENDING', remaining lease ms, stale value or false} while another caller fills.
local data, meta, lease, stale = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local value = redis.call('GET', data)
if value then
  return {'HIT', value, redis.call('HGET', meta, 'v') or '0'}
end
local remaining = redis.call('PTTL', lease)
if remaining == -2 then
  redis.call('SET', lease, ARGV[1], 'PX', ARGV[2])
  return {'GRANTED'}
end
local stale_value = false
if ARGV[3] == '1' then stale_value = redis.call('GET', stale) end
return {'PENDING', remaining, stale_value}
