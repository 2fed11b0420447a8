#!lua flags=no-writes
-- A collection read whose answer is sized before it is read: MEMORY USAGE (SAMPLES 0
-- walks the elements without copying them) scaled to the part the read answers; over
-- the byte budget, the read is refused without Redis building the answer.
-- KEYS[1]: the collection. ARGV[1]: the byte budget. ARGV[2]: the part read: 'all',
-- 'range <start> <stop>' (indexes, negative from the end, as LRANGE/ZRANGE take them)
-- or 'count <n>' (at most n elements). ARGV[3..]: the read command and its arguments.
local key, budget, part = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local usage = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0')
if usage then
  local estimate = usage
  if part ~= 'all' then
    local lengths = {list = 'LLEN', zset = 'ZCARD', set = 'SCARD', hash = 'HLEN', stream = 'XLEN'}
    local command = lengths[redis.call('TYPE', key).ok]
    local length = command and redis.call(command, key) or 0
    local wanted = length
    local words = {}
    for word in string.gmatch(part, '%S+') do table.insert(words, word) end
    if words[1] == 'range' then
      local start, stop = tonumber(words[2]), tonumber(words[3])
      if start < 0 then start = math.max(0, length + start) end
      if stop < 0 then stop = length + stop end
      stop = math.min(stop, length - 1)
      wanted = math.max(0, stop - start + 1)
    elseif words[1] == 'count' then
      wanted = math.min(length, tonumber(words[2]))
    end
    if length > 0 then estimate = usage * wanted / length end
  end
  if estimate > budget then
    return redis.error_reply('TOOLARGE the answer would take about ' ..
      string.format('%d', estimate) .. ' bytes, over the budget of ' ..
      string.format('%d', budget))
  end
end
return redis.call(unpack(ARGV, 3))
