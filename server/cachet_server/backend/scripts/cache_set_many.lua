-- Write many cache values of one slot unconditionally.
-- KEYS: data_1, meta_1, lease_1, data_2, meta_2, lease_2, ...
-- ARGV: value_1, ttl_ms_1, value_2, ttl_ms_2, ...
-- Answers the versions, in order.
local versions = {}
for i = 1, #KEYS, 3 do
  local n = (i - 1) / 3
  redis.call('SET', KEYS[i], ARGV[2 * n + 1], 'PX', ARGV[2 * n + 2])
  redis.call('HDEL', KEYS[i + 1], 'r', 't')
  redis.call('DEL', KEYS[i + 2])
  table.insert(versions, cachet_touch(KEYS[i], KEYS[i + 1]))
end
return versions
