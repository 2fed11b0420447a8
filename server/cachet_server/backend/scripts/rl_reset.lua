-- Clear rate-limit state, so the next check starts from a full allowance.
-- KEYS: state keys (one slot). Reply: {now_seconds, now_microseconds, keys that existed}.
local clock = redis.call('TIME')
local cleared = 0
for _, key in ipairs(KEYS) do
  cleared = cleared + redis.call('DEL', key)
end
return {tonumber(clock[1]), tonumber(clock[2]), cleared}
