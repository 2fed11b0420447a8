#!lua
-- Append one event to a durable stream (XADD), optionally trimmed (MAXLEN ~).
-- KEYS: stream, remembered (where the result of a request with a request_id is
-- kept; any key of the slot when there is none).
-- ARGV: how long to remember the result in ms ('' = no request_id), max_len
-- ('' = no trimming), then field, value, field, value, ...
-- Answers the new entry's id; a request whose result is remembered answers the
-- first call's id again and appends nothing.
local stream, remembered = KEYS[1], KEYS[2]
local window_ms, max_len = ARGV[1], ARGV[2]
if window_ms ~= '' then
  local earlier = cachet_recall(remembered)
  if earlier then return earlier[1] end
end
local command = {'XADD', stream}
if max_len ~= '' then
  command[#command + 1] = 'MAXLEN'
  command[#command + 1] = '~'
  command[#command + 1] = max_len
end
command[#command + 1] = '*'
for i = 3, #ARGV do command[#command + 1] = ARGV[i] end
local id = redis.call(unpack(command))
if window_ms ~= '' then cachet_remember(remembered, window_ms, {id}) end
return id
