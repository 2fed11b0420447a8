-- Read cache values with their versions, atomically per entry.
-- KEYS: data_1, meta_1, data_2, meta_2, ...
-- ARGV[1]: '1' to also answer the remaining TTL and the recorded recompute time.
-- Answers per entry: found(0/1), value, version, pttl, recompute_ms.
local with_ttl = ARGV[1] == '1'
local out = {}
for i = 1, #KEYS, 2 do
  local value = redis.call('GET', KEYS[i])
  if value then
    local meta = redis.call('HMGET', KEYS[i + 1], 'v', 'r')
    local pttl = -1
    if with_ttl then pttl = redis.call('PTTL', KEYS[i]) end
    table.insert(out, 1)
    table.insert(out, value)
    table.insert(out, meta[1] or '0')
    table.insert(out, pttl)
    table.insert(out, meta[2] or '0')
  else
    table.insert(out, 0)
    table.insert(out, '')
    table.insert(out, '0')
    table.insert(out, -2)
    table.insert(out, '0')
  end
end
return out
