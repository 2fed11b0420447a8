-- Set (ARGV[1] = ttl_ms) or remove (ARGV[1] = 'persist') the TTL of a key and its metadata.
-- KEYS: data, meta, stale.
-- A stale copy (kept for a value filled with a stale TTL) keeps outliving the value
-- by that stale TTL. Answers {1 when the key exists else 0, its tags ('' = none)}, so
-- the caller can make the tags' indexes outlive the key's new TTL.
local data, meta, stale = KEYS[1], KEYS[2], KEYS[3]
local found
if ARGV[1] == 'persist' then
  found = redis.call('EXISTS', data)
  if found == 1 then redis.call('PERSIST', data) end
else
  found = redis.call('PEXPIRE', data, ARGV[1])
end
if found == 0 or redis.call('EXISTS', meta) == 0 then return {found, ''} end
cachet_sync_ttl(data, meta)
local stale_ms = redis.call('HGET', meta, 's')
if stale_ms and redis.call('EXISTS', stale) == 1 then
  local pttl = redis.call('PTTL', data)
  if pttl == -1 then
    redis.call('PERSIST', stale)
  else
    redis.call('PEXPIRE', stale, pttl + tonumber(stale_ms))
  end
end
return {found, redis.call('HGET', meta, 't') or ''}
