-- Describe one key without changing it: type, TTL, size, memory, encoding, idle
-- time or LFU frequency and, for a cache value, its version and fencing token.
-- KEYS[1]: the key; KEYS[2] (optional): its cache metadata hash (same slot).
-- Answers {0} for a missing key, else {1, type, pttl, size, memory_bytes, encoding,
-- idle_seconds or -1, lfu_frequency or -1, version, fencing_token}.
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
if kind == 'none' then
  return {0}
end
-- Read the idle time before STRLEN & co. below touch the key. Redis tracks either
-- idle time (LRU policies) or frequency (LFU policies); asking for the other errs.
local idle = redis.pcall('OBJECT', 'IDLETIME', key)
if type(idle) ~= 'number' then idle = -1 end
local freq = redis.pcall('OBJECT', 'FREQ', key)
if type(freq) ~= 'number' then freq = -1 end
local encoding = redis.call('OBJECT', 'ENCODING', key)
local pttl = redis.call('PTTL', key)
local memory = redis.call('MEMORY', 'USAGE', key) or 0
local size_commands = {
  string = 'STRLEN', list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN', stream = 'XLEN'
}
local size = 0
if size_commands[kind] then
  size = redis.call(size_commands[kind], key)
end
local version, fencing = '0', '0'
if KEYS[2] then
  local meta = redis.call('HMGET', KEYS[2], 'v', 'f')
  version = meta[1] or '0'
  fencing = meta[2] or '0'
end
return {1, kind, pttl, size, memory, encoding, idle, freq, version, fencing}
