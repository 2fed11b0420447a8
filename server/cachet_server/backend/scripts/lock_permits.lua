#!lua
-- Exclusive locks and counted semaphores. A lock is a semaphore of one permit, so
-- both share this one script: grants, owner checks, fencing and the fair queue.
--
-- KEYS (one name, one slot):
--   holders  zset  owner token -> expiry (Redis ms)
--   owners   hash  owner token -> "<fencing token>\n<holder description>",
--                  and '#limit' -> the limit the live holders were admitted under
--   fence    string counter of grants; never expires, so it never goes backwards
--   queue    zset  waiter ticket -> arrival (Redis us): the order waiters are served in
--   waiters  zset  waiter ticket -> lease expiry (Redis ms): a waiter that stops
--                  refreshing its ticket (its server died) drops out of the queue
-- ARGV[1] op, ARGV[2] the wake channel; then per op:
--   acquire  token ttl_ms holder limit ticket('' = do not queue) lease_ms
--            -> {'GRANTED', fence, expire_ms, holders, sec, usec}
--             | {'BUSY', retry_ms, holders, sec, usec, remaining_ms of the first permit}
--             | {'LIMIT_MISMATCH', limit, sec, usec}
--   release  token         -> {'OK', holders, sec, usec} | {'NOT_OWNED', sec, usec}
--   extend   token ttl_ms  -> {'OK', fence, expire_ms, sec, usec} | {'NOT_OWNED', sec, usec}
--   leave    ticket token  -> {'OK', sec, usec}  (also returns the token's permit, if live)
--   inspect                -> {sec, usec, fence, limit, waiters, {fence, remaining_ms, holder}...}
-- A permit is live while its expiry is after now; expired entries are purged
-- before any decision. Waiters are woken by PUBLISHing the tickets that may now
-- take a permit (space-separated) on the wake channel.
local holders, owners, fence_key, queue, waiters = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, channel = ARGV[1], ARGV[2]
local LIMIT = '#limit'
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_us = clock[1] .. string.format('%06d', tonumber(clock[2]))

-- Variadic commands in slices, below Lua's stack limit for unpack().
local function in_slices(command, key, items)
  for i = 1, #items, 1000 do
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- `zset` and its companion key live exactly as long as the zset's latest score.
local function expire_with_latest(zset, companion)
  local latest = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if latest[2] == nil then
    redis.call('DEL', zset, companion)
    return
  end
  local ttl = math.max(1, tonumber(latest[2]) - now_ms)
  redis.call('PEXPIRE', zset, ttl)
  redis.call('PEXPIRE', companion, ttl)
end

local function purge_holders()
  local expired = redis.call('ZRANGEBYSCORE', holders, '-inf', now_ms)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', holders, '-inf', now_ms)
    in_slices('HDEL', owners, expired)
  end
  expire_with_latest(holders, owners)
end

local function purge_waiters()
  local expired = redis.call('ZRANGEBYSCORE', waiters, '-inf', now_ms)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now_ms)
    in_slices('ZREM', queue, expired)
  end
  expire_with_latest(waiters, queue)
end

local function dequeue(ticket)
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', waiters, ticket)
  expire_with_latest(waiters, queue)
end

-- Tell the first `free` waiters in the queue that a permit is theirs to take.
local function wake(free)
  if free <= 0 then return end
  local heads = redis.call('ZRANGE', queue, 0, free - 1)
  if #heads > 0 then
    redis.call('PUBLISH', channel, table.concat(heads, ' '))
  end
end

-- The queue moved up by one: the ticket now at rank limit-1 became next in line for
-- the permit that expires first. Tell it, so it looks again and learns that permit's
-- TTL as the time to look next (nobody publishes an expiry).
local function wake_next_in_line(limit)
  local moved_up = redis.call('ZRANGE', queue, limit - 1, limit - 1)
  if #moved_up > 0 then
    redis.call('PUBLISH', channel, moved_up[1])
  end
end

local function live_expiry(token)
  local expiry = tonumber(redis.call('ZSCORE', holders, token))
  if expiry and expiry > now_ms then return expiry end
  return nil
end

local function current_limit()
  return tonumber(redis.call('HGET', owners, LIMIT) or '1')
end

-- Remove a live permit; wake as many waiters as permits are now free.
local function give_back(token)
  local limit = current_limit()
  redis.call('ZREM', holders, token)
  redis.call('HDEL', owners, token)
  purge_holders()
  purge_waiters()
  local count = redis.call('ZCARD', holders)
  wake(limit - count)
  return count
end

if op == 'acquire' then
  local token, ttl_ms, holder = ARGV[3], tonumber(ARGV[4]), ARGV[5]
  local limit, ticket, lease_ms = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
  purge_holders()
  purge_waiters()
  local count = redis.call('ZCARD', holders)
  if count > 0 then
    local admitted = current_limit()
    if admitted ~= limit then
      return {'LIMIT_MISMATCH', admitted, clock[1], clock[2]}
    end
  end
  local rank = false
  if ticket ~= '' then rank = redis.call('ZRANK', queue, ticket) end
  local ahead = rank or redis.call('ZCARD', queue)
  local free = limit - count
  if free > ahead then
    local fence = redis.call('INCR', fence_key)
    local expire_ms = now_ms + ttl_ms
    redis.call('ZADD', holders, cachet_int(expire_ms), token)
    redis.call('HSET', owners, token, cachet_int(fence) .. '\n' .. holder, LIMIT, limit)
    expire_with_latest(holders, owners)
    -- A semaphore may have more free permits than this grant took.
    if rank then
      dequeue(ticket)
      if free - 1 <= 0 then wake_next_in_line(limit) end
    end
    wake(free - 1)
    return {'GRANTED', fence, expire_ms, count + 1, clock[1], clock[2]}
  end
  if ticket ~= '' then
    if not rank then redis.call('ZADD', queue, now_us, ticket) end
    redis.call('ZADD', waiters, cachet_int(now_ms + lease_ms), ticket)
    expire_with_latest(waiters, queue)
  end
  -- When to look again if no notification comes: when the first permit expires,
  -- if this caller is next in line for it; when the first waiter's lease would
  -- lapse, if permits are free but promised to earlier waiters; otherwise only
  -- when a release notifies it (or its own safety look).
  local retry_ms, remaining_ms = lease_ms, 0
  if free > 0 then
    wake(free)
    retry_ms = tonumber(redis.call('ZRANGE', waiters, 0, 0, 'WITHSCORES')[2] or now_ms) - now_ms
  else
    remaining_ms = tonumber(redis.call('ZRANGE', holders, 0, 0, 'WITHSCORES')[2]) - now_ms
    if ahead < limit then retry_ms = remaining_ms end
  end
  return {'BUSY', math.max(retry_ms, 0), count, clock[1], clock[2], remaining_ms}
end

if op == 'release' then
  local token = ARGV[3]
  if not live_expiry(token) then return {'NOT_OWNED', clock[1], clock[2]} end
  local count = give_back(token)
  return {'OK', count, clock[1], clock[2]}
end

if op == 'extend' then
  local token, ttl_ms = ARGV[3], tonumber(ARGV[4])
  if not live_expiry(token) then return {'NOT_OWNED', clock[1], clock[2]} end
  local expire_ms = now_ms + ttl_ms
  redis.call('ZADD', holders, 'XX', cachet_int(expire_ms), token)
  expire_with_latest(holders, owners)
  local info = redis.call('HGET', owners, token)
  local fence = string.sub(info, 1, string.find(info, '\n', 1, true) - 1)
  return {'OK', tonumber(fence), expire_ms, clock[1], clock[2]}
end

if op == 'leave' then
  local ticket, token = ARGV[3], ARGV[4]
  local rank = redis.call('ZRANK', queue, ticket)
  dequeue(ticket)
  if live_expiry(token) then
    give_back(token)
  else
    -- The queue moved up: if a permit is free, the new head may take it.
    purge_holders()
    purge_waiters()
    local count = redis.call('ZCARD', holders)
    if count == 0 then
      wake(1)
    else
      local limit = current_limit()
      wake(limit - count)
      if rank and rank < limit and count >= limit then wake_next_in_line(limit) end
    end
  end
  return {'OK', clock[1], clock[2]}
end

if op == 'inspect' then
  local live = redis.call('ZRANGEBYSCORE', holders, '(' .. cachet_int(now_ms), '+inf', 'WITHSCORES')
  local permits = {}
  for i = 1, #live, 2 do
    local info = redis.call('HGET', owners, live[i]) or '0\n'
    local newline = string.find(info, '\n', 1, true)
    permits[#permits + 1] = tonumber(string.sub(info, 1, newline - 1))
    permits[#permits + 1] = tonumber(live[i + 1]) - now_ms
    permits[#permits + 1] = string.sub(info, newline + 1)
  end
  local limit = 0
  if #live > 0 then limit = current_limit() end
  local waiting = redis.call('ZCOUNT', waiters, '(' .. cachet_int(now_ms), '+inf')
  local fence = tonumber(redis.call('GET', fence_key) or '0')
  return {clock[1], clock[2], fence, limit, waiting, permits}
end

return redis.error_reply('lock_permits: unknown op ' .. tostring(op))
