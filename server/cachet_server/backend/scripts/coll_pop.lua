-- Pop up to a count of values from a list end, or random members from a set,
-- stopping before the answer would outgrow the gRPC message limit: a value
-- popped is never lost to an answer too large to send. At least one value is
-- popped when there is one.
--
-- KEYS[1]: the list or set. KEYS[2] (optional): the holding list of a waiting
-- ListPop, whose value (moved there by BLMOVE) comes first; it is emptied.
-- ARGV[1]: 'LEFT', 'RIGHT' or 'SET'. ARGV[2]: most values to pop. ARGV[3]: the
-- byte budget of the answer.
-- Answers the popped values, in pop order.
local key, where = KEYS[1], ARGV[1]
local count, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
-- What protobuf adds around each value of a `repeated bytes` field, at most.
local PER_VALUE_OVERHEAD = 6

local peek
if where == 'SET' then
  peek = function() return redis.call('SRANDMEMBER', key) end
else
  local index = where == 'LEFT' and 0 or -1
  peek = function() return redis.call('LINDEX', key, index) end
end

local values, used = {}, 0
if KEYS[2] then
  values = redis.call('LRANGE', KEYS[2], 0, -1)
  for _, value in ipairs(values) do used = used + #value + PER_VALUE_OVERHEAD end
  redis.call('DEL', KEYS[2])
end
while #values < count do
  local value = peek()
  if not value then break end
  local cost = #value + PER_VALUE_OVERHEAD
  if #values > 0 and used + cost > budget then break end
  if where == 'SET' then
    redis.call('SREM', key, value)
  elseif where == 'LEFT' then
    redis.call('LPOP', key)
  else
    redis.call('RPOP', key)
  end
  values[#values + 1] = value
  used = used + cost
end
return values
