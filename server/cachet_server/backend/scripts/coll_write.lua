#!lua
-- Collection writes (hashes, lists, sets, sorted sets): the write and the
-- collection's TTL in one atomic step, so no collection ever lives without one.
-- Every write voids a fill lease on the collection's key (see cache_fill): a
-- value computed before the write must not replace what the write made.
--
-- KEYS[1]: the collection written. KEYS[2]: its fill lease. KEYS[3]: where the
-- result of a request with a request_id is remembered (any key of the slot
-- when there is none). KEYS[4..]: collections of the same slot the operation
-- reads from (the source of a move, the sets of a store).
-- ARGV[1]: TTL in ms. ARGV[2]: '1' resets the TTL of an existing collection
-- too; otherwise only a collection this call creates gets it.
-- ARGV[3]: the operation, one of `ops` below. ARGV[4]: how long to remember
-- the result, in ms ('' = the request has no request_id). ARGV[5..]: the
-- operation's arguments. A request whose result is remembered answers that
-- result again and writes nothing.
local target = KEYS[1]
local ttl_ms, refresh, op = ARGV[1], ARGV[2] == '1', ARGV[3]

-- Lua's unpack (and so redis.call) takes a few thousand values at most, so
-- long argument lists go in chunks; answers the sum of the replies.
local CHUNK = 1000
local function call_chunked(command, prefix, first)
  local total = 0
  for i = first, #ARGV, CHUNK do
    local call = {command, target}
    for _, word in ipairs(prefix) do call[#call + 1] = word end
    for j = i, math.min(i + CHUNK - 1, #ARGV) do call[#call + 1] = ARGV[j] end
    total = total + redis.call(unpack(call))
  end
  return total
end

local ops = {}

-- ARGV[5..]: field, value, field, value, ... Answers how many fields were new.
function ops.hash_set()
  return call_chunked('HSET', {}, 5)
end

-- As hash_set, but leaves existing fields alone (HSETNX per field).
function ops.hash_set_absent()
  local added = 0
  for i = 5, #ARGV, 2 do
    added = added + redis.call('HSETNX', target, ARGV[i], ARGV[i + 1])
  end
  return added
end

-- ARGV[5]: field, ARGV[6]: 'int' or 'float', ARGV[7]: delta.
-- Answers {'OK', new value as a string} or {'NOT_A_NUMBER'}.
function ops.hash_increment()
  local command = ARGV[6] == 'int' and 'HINCRBY' or 'HINCRBYFLOAT'
  if command == 'HINCRBYFLOAT' then
    local refused = cachet_check_float_sum(redis.call('HGET', target, ARGV[5]), ARGV[7])
    if refused then return refused end
  end
  local reply = redis.pcall(command, target, ARGV[5], ARGV[7])
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'hash value is not', 1, true) then return {'NOT_A_NUMBER'} end
    error(reply)
  end
  -- Read the field back: an integer reply passes through a Lua double and
  -- would lose precision above 2^53.
  return {'OK', redis.call('HGET', target, ARGV[5])}
end

-- ARGV[5]: 'LEFT' or 'RIGHT', ARGV[6]: '1' to push only onto an existing list,
-- ARGV[7], ARGV[8]: range to keep afterwards ('' = keep all), ARGV[9..]: values.
-- Answers the new length.
function ops.list_push()
  local command = (ARGV[5] == 'LEFT' and 'LPUSH' or 'RPUSH') .. (ARGV[6] == '1' and 'X' or '')
  call_chunked(command, {}, 9)
  if ARGV[7] ~= '' then redis.call('LTRIM', target, ARGV[7], ARGV[8]) end
  return redis.call('LLEN', target)
end

-- KEYS[4]: source list. ARGV[5]: end to pop from, ARGV[6]: end to push at.
-- Answers {1, value} or {0, ''} when the source is empty.
function ops.list_move()
  -- LLEN raises WRONGTYPE for a destination of another type even when the
  -- source is empty (LMOVE alone would then answer nil).
  redis.call('LLEN', target)
  local value = redis.call('LMOVE', KEYS[4], target, ARGV[5], ARGV[6])
  if value then return {1, value} end
  return {0, ''}
end

-- ARGV[5..]: members. Answers how many were new.
function ops.set_add()
  return call_chunked('SADD', {}, 5)
end

-- KEYS[4]: source set. ARGV[5]: member. Answers 1 when it moved.
function ops.set_move()
  redis.call('SCARD', target) -- WRONGTYPE for a destination of another type
  return redis.call('SMOVE', KEYS[4], target, ARGV[5])
end

-- KEYS[4..]: the sets. ARGV[5]: SINTERSTORE, SUNIONSTORE or SDIFFSTORE.
-- Replaces the destination; answers its cardinality.
function ops.set_store()
  redis.call('SCARD', target) -- a destination of another type is refused, not replaced
  return redis.call(ARGV[5], target, unpack(KEYS, 4))
end

-- ARGV[5]: '' or NX / XX / GT / LT. ARGV[6..]: score, member, ...
-- Answers {members added, members added or changed}.
function ops.sorted_set_add()
  local before = redis.call('ZCARD', target)
  local flags = {'CH'}
  if ARGV[5] ~= '' then flags = {ARGV[5], 'CH'} end
  local changed = call_chunked('ZADD', flags, 6)
  return {redis.call('ZCARD', target) - before, changed}
end

-- ARGV[5]: delta, ARGV[6]: member. Answers the new score (a string). Redis would store
-- a score that overflows to +/-inf; it is refused instead, with nothing written.
function ops.sorted_set_increment()
  local refused = cachet_check_float_sum(redis.call('ZSCORE', target, ARGV[6]), ARGV[5])
  if refused then return refused end
  return redis.call('ZINCRBY', target, ARGV[5], ARGV[6])
end

local remembered, window_ms = KEYS[3], ARGV[4]
if window_ms ~= '' then
  local earlier = cachet_recall(remembered)
  if earlier then return earlier end
end
local existed = redis.call('EXISTS', target)
local reply = ops[op]()
cachet_void_lease(KEYS[2])
if (existed == 0 or refresh) and redis.call('EXISTS', target) == 1 then
  redis.call('PEXPIRE', target, ttl_ms)
end
if window_ms ~= '' then cachet_remember(remembered, window_ms, reply) end
return reply
