-- Publish an event stamped with Redis's clock: "<unix time in µs> <event bytes>",
-- so subscribers can date an event its publisher left undated.
-- KEYS[1] (only with a request_id): where the first call's result is remembered.
-- ARGV[1] channel, ARGV[2] the encoded event, ARGV[3] the event's id, ARGV[4]
-- how long to remember the result in ms ('' = no request_id).
-- Answers {receivers, event id}: a request whose result is remembered answers
-- the first call's and publishes nothing.
local window_ms = ARGV[4]
if window_ms ~= '' then
  local earlier = cachet_recall(KEYS[1])
  if earlier then return earlier end
end
local now = redis.call('TIME')
local receivers = redis.call(
  'PUBLISH', ARGV[1], now[1] .. string.format('%06d', tonumber(now[2])) .. ' ' .. ARGV[2])
local reply = {receivers, ARGV[3]}
if window_ms ~= '' then cachet_remember(KEYS[1], window_ms, reply) end
return reply
