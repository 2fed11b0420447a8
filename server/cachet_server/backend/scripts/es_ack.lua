-- Acknowledge events of a group; unlike a bare XACK, a missing group is an error.
-- KEYS[1] the stream. ARGV[1] group, ARGV[2..] ids. Returns how many were pending.
redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 0) -- NOGROUP when the group is missing
local acked = 0
local chunk = 500
for first = 2, #ARGV, chunk do
  local ids = {}
  for i = first, math.min(first + chunk - 1, #ARGV) do
    ids[#ids + 1] = ARGV[i]
  end
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
return acked
