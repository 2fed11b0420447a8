-- Read cache values with their versions, atomically per entry.
-- KEYS: data_1, meta_1, data_2, meta_2, ...
-- ARGV[1]: '1' to also answer the remaining TTL and the recorded recompute time.
-- ARGV[2]: the byte budget of the values (absent: none). Checked with STRLEN before any
-- value is read, so an answer too large is refused without Redis building it.
-- Answers per entry only what was asked, flat: value (nil when missing) and version
-- (an integer, 0 when missing), then with ARGV[1] = '1' also pttl and recompute_ms
-- (integers). Versions are computed in Lua numbers (cachet_next_version), so answering
-- them as integers loses nothing.
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
local n = 0
for i = 1, #KEYS, 2 do
  local value = redis.call('GET', KEYS[i])
  if not with_ttl then
    out[n + 1] = value
    out[n + 2] = value and tonumber(redis.call('HGET', KEYS[i + 1], 'v') or '0') or 0
    n = n + 2
  elseif value then
    local meta = redis.call('HMGET', KEYS[i + 1], 'v', 'r')
    out[n + 1] = value
    out[n + 2] = tonumber(meta[1] or '0')
    out[n + 3] = redis.call('PTTL', KEYS[i])
    out[n + 4] = tonumber(meta[2] or '0')
    n = n + 4
  else
    out[n + 1] = false
    out[n + 2] = 0
    out[n + 3] = -2
    out[n + 4] = 0
    n = n + 4
  end
end
return out
