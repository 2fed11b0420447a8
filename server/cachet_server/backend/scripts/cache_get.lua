-- Read cache values with their versions, atomically per entry.
-- KEYS: data_1, meta_1, data_2, meta_2, ...
-- ARGV[1]: '1' to also answer the remaining TTL and the recorded recompute time.
-- ARGV[2]: the byte budget of the values (absent: none). Checked with STRLEN before any
-- value is read, so an answer too large is refused without Redis building it.
-- Answers per entry only what was asked: value (nil when missing) and version, then
-- with ARGV[1] = '1' also pttl and recompute_ms.
local with_ttl = ARGV[1] == '1'
local budget = tonumber(ARGV[2])
if budget then
  local total = 0
  for i = 1, #KEYS, 2 do
    total = total + redis.call('STRLEN', KEYS[i])
  end
  if total > budget then
    return redis.error_reply('TOOLARGE the values add up to ' .. string.format('%d', total) ..
      ' bytes, over the budget of ' .. string.format('%d', budget))
  end
end
local out = {}
for i = 1, #KEYS, 2 do
  local value = redis.call('GET', KEYS[i])
  if not with_ttl then
    if value then
      table.insert(out, value)
      table.insert(out, redis.call('HGET', KEYS[i + 1], 'v') or '0')
    else
      table.insert(out, false)
      table.insert(out, '0')
    end
  elseif value then
    local meta = redis.call('HMGET', KEYS[i + 1], 'v', 'r')
    table.insert(out, value)
    table.insert(out, meta[1] or '0')
    table.insert(out, redis.call('PTTL', KEYS[i]))
    table.insert(out, meta[2] or '0')
  else
    table.insert(out, false)
    table.insert(out, '0')
    table.insert(out, -2)
    table.insert(out, '0')
  end
end
return out
