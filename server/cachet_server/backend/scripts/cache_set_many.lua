#!lua
-- Write many cache values of one slot unconditionally.
-- KEYS: data_1, meta_1, lease_1, stale_1, data_2, meta_2, lease_2, stale_2, ...
-- ARGV: value_1, ttl_ms_1, value_2, ttl_ms_2, ...
-- A plain write drops the recompute time, tags, stale policy and stale copy of
-- the value it replaces, and voids any fill in progress. Answers the versions, in order,
-- as integers (computed in Lua numbers by cachet_next_version: nothing is lost).
local versions = {}
for i = 1, #KEYS, 4 do
  local n = (i - 1) / 4
  redis.call('SET', KEYS[i], ARGV[2 * n + 1], 'PX', ARGV[2 * n + 2])
  redis.call('HDEL', KEYS[i + 1], 'r', 't', 's')
  redis.call('DEL', KEYS[i + 3])
  cachet_void_lease(KEYS[i + 2])
  versions[n + 1] = tonumber(cachet_touch(KEYS[i], KEYS[i + 1]))
end
return versions
