#!lua
-- Conditionally write one cache value and its metadata.
-- KEYS: data, meta, lease, stale
-- ARGV: value, ttl_ms (0 = keep the current TTL), condition ('', 'NX', 'XX'),
--       if_version ('' = none), return_previous ('0'/'1'), fencing_token ('' = none),
--       recompute_ms ('' = none), default_ttl_ms (for keep-TTL writes that create),
--       tags (newline-joined, '' = none)
-- Answers {'OK', version, previous_found, previous, pttl} or {reason, detail}.
local data, meta, lease, stale = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local value, ttl_ms, condition = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local if_version, return_previous, fence = ARGV[4], ARGV[5] == '1', ARGV[6]
local recompute_ms, default_ttl_ms, tags = ARGV[7], tonumber(ARGV[8]), ARGV[9]

local previous = redis.call('GET', data)
local exists = previous ~= false
if condition == 'NX' and exists then return {'KEY_EXISTS', ''} end
if condition == 'XX' and not exists then return {'KEY_NOT_FOUND', ''} end
local stored = redis.call('HMGET', meta, 'v', 'f')
if if_version ~= '' then
  local current = '0'
  if exists then current = stored[1] or '0' end
  if current ~= if_version then return {'VERSION_MISMATCH', current} end
end
if fence ~= '' then
  local highest = tonumber(stored[2] or '0')
  if tonumber(fence) < highest then return {'FENCING_TOKEN_STALE', stored[2]} end
  redis.call('HSET', meta, 'f', fence)
end

if ttl_ms == 0 and exists then
  redis.call('SET', data, value, 'KEEPTTL')
else
  if ttl_ms == 0 then ttl_ms = default_ttl_ms end
  redis.call('SET', data, value, 'PX', ttl_ms)
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
-- A direct write supersedes any fill in progress, and the stale copy a fill kept.
redis.call('HDEL', meta, 's')
redis.call('DEL', stale)
cachet_void_lease(lease)
local version = cachet_touch(data, meta)
local pttl = redis.call('PTTL', data)
if return_previous and exists then
  return {'OK', version, 1, previous, pttl}
end
return {'OK', version, 0, '', pttl}
