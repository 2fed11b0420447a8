-- Publish an event stamped with Redis's clock: "<unix time in µs> <event bytes>",
-- so subscribers can date an event its publisher left undated.
-- ARGV[1] channel, ARGV[2] the encoded event. Returns the number of receivers.
local now = redis.call('TIME')
return redis.call('PUBLISH', ARGV[1], now[1] .. string.format('%06d', tonumber(now[2])) .. ' ' .. ARGV[2])
