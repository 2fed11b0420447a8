-- Set (ARGV[1] = ttl_ms) or remove (ARGV[1] = 'persist') the TTL of a key and its metadata.
-- KEYS: data, meta. Answers 1 when the key exists, else 0.
local data, meta = KEYS[1], KEYS[2]
local found
if ARGV[1] == 'persist' then
  found = redis.call('EXISTS', data)
  if found == 1 then redis.call('PERSIST', data) end
else
  found = redis.call('PEXPIRE', data, ARGV[1])
end
if found == 1 and redis.call('EXISTS', meta) == 1 then cachet_sync_ttl(data, meta) end
return found
