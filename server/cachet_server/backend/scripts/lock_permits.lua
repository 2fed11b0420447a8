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
-- ARGV[1] op; then per op (arguments left off at the end take their defaults: an
-- Acquire that does not wait sends four, each one more a step in the table Redis
-- builds for ARGV):
--   acquire  token ttl_ms limit [holder(default '') [ticket lease_ms]] (no ticket or
--            '': do not queue)
--            -> {'GRANTED', fence, holders, server_us}   (the permit expires at
--                server_us // 1000 + ttl_ms)
--             | {'BUSY', retry_ms, remaining_ms of the first permit}
--             | {'LIMIT_MISMATCH', limit}
--   release  token         -> {'OK', holders, server_us} | {'NOT_OWNED', server_us}
--   extend   token ttl_ms  -> {'OK', fence, server_us} | {'NOT_OWNED', server_us}
--   leave    ticket token  -> {'OK'}  (also returns the token's permit, if live)
--   inspect                -> {server_us, fence, limit, waiters, {fence, remaining_ms, holder}...}
-- server_us is Redis's clock (TIME) in microseconds.
-- A permit is live while its expiry is after now; expired entries are purged
-- before any decision. Waiters are woken by PUBLISHing the tickets that may now
-- take a permit (space-separated) on the wake channel, 'cachet-lock-wake:' followed by
-- the queue's key (backend/locks.py subscribes to the prefix).
--
-- Lifetimes: holders and owners expire together at the latest permit's expiry,
-- queue and waiters together at the latest waiter lease (PEXPIREAT: the same
-- absolute time for both keys of a pair, so neither outlives the other). So an
-- absent holders zset means no owners hash, and an absent waiters zset an empty
-- queue: the common case (a free lock, nobody waiting) costs one read per pair.
local holders, owners, fence_key, queue, waiters = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op = ARGV[1]
local LIMIT = '#limit'
local clock = redis.call('TIME')
local sec, usec = tonumber(clock[1]), tonumber(clock[2])
local now_ms = sec * 1000 + math.floor(usec / 1000)
local server_us = sec * 1000000 + usec
-- Numbers go to redis.call as text made with '%d': a Lua number converts with
-- '%.14g', which costs several times a short command.
local format = string.format

-- The common case first, before the helpers below are built (each is a closure made
-- on every call): a free lock or semaphore that nobody waits for is taken, and the
-- only live permit of one that nobody waits for is given back, each with the fewest
-- commands. Both decide exactly as the general path further down would.
if op == 'acquire' and redis.call('EXISTS', holders, waiters) == 0 then
  -- No live permit and no waiter (see "Lifetimes"): no limit to check, no queue rank.
  local token, ttl_ms, holder = ARGV[2], tonumber(ARGV[3]), ARGV[5] or ''
  local fence = redis.call('INCR', fence_key)
  -- ttl_ms is at least 1, so this expiry is after now.
  local at = format('%d', now_ms + ttl_ms)
  redis.call('ZADD', holders, at, token)
  redis.call('HSET', owners, token, format('%d\n%s', fence, holder), LIMIT, ARGV[4])
  redis.call('PEXPIREAT', holders, at)
  redis.call('PEXPIREAT', owners, at)
  return {'GRANTED', fence, 1, server_us}
end
if op == 'release' then
  -- The first two entries: exactly one, the caller's live permit, means it is the only
  -- permit; with no waiter, giving it back leaves nothing to purge or wake.
  local first = redis.call('ZRANGE', holders, '0', '1', 'WITHSCORES')
  if #first == 2 and first[1] == ARGV[2] and tonumber(first[2]) > now_ms
      and redis.call('EXISTS', waiters) == 0 then
    redis.call('DEL', holders, owners)
    return {'OK', 0, server_us}
  end
end

-- `zset` and its companion key expire at `at_ms` (never at or before now: an
-- expiry in the past would delete them at once).
local channel = 'cachet-lock-wake:' .. queue

local function expire_at(zset, companion, at_ms)
  local at = format('%d', math.max(at_ms, now_ms + 1))
  redis.call('PEXPIREAT', zset, at)
  redis.call('PEXPIREAT', companion, at)
end

-- `zset` and its companion key live exactly as long as the zset's latest score.
local function expire_with_latest(zset, companion)
  local latest = redis.call('ZRANGE', zset, '-1', '-1', 'WITHSCORES')[2]
  if latest == nil then
    redis.call('DEL', zset, companion)
    return
  end
  expire_at(zset, companion, tonumber(latest))
end

-- Drop the entries of `zset` whose score (expiry) has passed, and with `drop`
-- ('HDEL' or 'ZREM') the same members of its companion; answers how many are left.
-- holders/owners: the live permits; waiters/queue: the queued waiters (queue and
-- waiters hold the same tickets).
local function purge(zset, companion, drop)
  local first = redis.call('ZRANGE', zset, '0', '0', 'WITHSCORES')[2]
  if first == nil then return 0 end
  if tonumber(first) > now_ms then return redis.call('ZCARD', zset) end
  local now = format('%d', now_ms)
  local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
  -- In slices, below Lua's stack limit for unpack().
  for i = 1, #expired, 1000 do
    redis.call(drop, companion, unpack(expired, i, math.min(i + 999, #expired)))
  end
  expire_with_latest(zset, companion)
  return redis.call('ZCARD', zset)
end

local function dequeue(ticket)
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', waiters, ticket)
  expire_with_latest(waiters, queue)
end

-- Tell the first `free` of the `queued` waiters that a permit is theirs to take.
local function wake(free, queued)
  if free <= 0 or queued <= 0 then return end
  local heads = redis.call('ZRANGE', queue, '0', format('%d', free - 1))
  if #heads > 0 then
    redis.call('PUBLISH', channel, table.concat(heads, ' '))
  end
end

-- The queue moved up by one: the ticket now at rank limit-1 became next in line for
-- the permit that expires first. Tell it, so it looks again and learns that permit's
-- TTL as the time to look next (nobody publishes an expiry).
local function wake_next_in_line(limit)
  local rank = format('%d', limit - 1)
  local moved_up = redis.call('ZRANGE', queue, rank, rank)
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
  local queued = purge(waiters, queue, 'ZREM')
  -- Read before the owners hash may go with its last permit.
  local limit = 1
  if queued > 0 then limit = current_limit() end
  redis.call('ZREM', holders, token)
  local count = purge(holders, owners, 'HDEL')
  if count == 0 then
    redis.call('DEL', owners)
  else
    redis.call('HDEL', owners, token)
    -- The permit given back may have been the latest.
    expire_with_latest(holders, owners)
  end
  wake(limit - count, queued)
  return count
end

if op == 'acquire' then
  local token, ttl_ms, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local holder, ticket, lease_ms = ARGV[5] or '', ARGV[6] or '', tonumber(ARGV[7] or '0')
  local count = purge(holders, owners, 'HDEL')
  local queued = purge(waiters, queue, 'ZREM')
  if count > 0 then
    local admitted = current_limit()
    if admitted ~= limit then
      return {'LIMIT_MISMATCH', admitted}
    end
  end
  local rank = false
  if ticket ~= '' and queued > 0 then rank = redis.call('ZRANK', queue, ticket) end
  local ahead = rank or queued
  local free = limit - count
  if free > ahead then
    local fence = redis.call('INCR', fence_key)
    local expire_ms = now_ms + ttl_ms
    redis.call('ZADD', holders, format('%d', expire_ms), token)
    redis.call('HSET', owners, token, format('%d\n%s', fence, holder), LIMIT, ARGV[4])
    if count == 0 then
      expire_at(holders, owners, expire_ms)
    else
      expire_with_latest(holders, owners)
    end
    -- A semaphore may have more free permits than this grant took.
    if rank then
      dequeue(ticket)
      queued = queued - 1
      if free - 1 <= 0 then wake_next_in_line(limit) end
    end
    wake(free - 1, queued)
    return {'GRANTED', fence, count + 1, server_us}
  end
  if ticket ~= '' then
    if not rank then
      -- No waiters: then the queue holds nothing live either (none of its tickets
      -- has a lease), whatever it may still hold.
      if queued == 0 then redis.call('DEL', queue) end
      redis.call('ZADD', queue, format('%d', server_us), ticket)
      queued = queued + 1
    end
    redis.call('ZADD', waiters, format('%d', now_ms + lease_ms), ticket)
    expire_with_latest(waiters, queue)
  end
  -- When to look again if no notification comes: when the first permit expires,
  -- if this caller is next in line for it; when the first waiter's lease would
  -- lapse, if permits are free but promised to earlier waiters; otherwise only
  -- when a release notifies it (or its own safety look).
  local retry_ms, remaining_ms = lease_ms, 0
  if free > 0 then
    wake(free, queued)
    retry_ms = tonumber(redis.call('ZRANGE', waiters, '0', '0', 'WITHSCORES')[2] or now_ms) - now_ms
  else
    remaining_ms = tonumber(redis.call('ZRANGE', holders, '0', '0', 'WITHSCORES')[2]) - now_ms
    if ahead < limit then retry_ms = remaining_ms end
  end
  return {'BUSY', math.max(retry_ms, 0), remaining_ms}
end

if op == 'release' then
  local token = ARGV[2]
  if not live_expiry(token) then return {'NOT_OWNED', server_us} end
  local count = give_back(token)
  return {'OK', count, server_us}
end

if op == 'extend' then
  local token, ttl_ms = ARGV[2], tonumber(ARGV[3])
  if not live_expiry(token) then return {'NOT_OWNED', server_us} end
  redis.call('ZADD', holders, 'XX', format('%d', now_ms + ttl_ms), token)
  expire_with_latest(holders, owners)
  local info = redis.call('HGET', owners, token)
  local fence = string.sub(info, 1, string.find(info, '\n', 1, true) - 1)
  return {'OK', tonumber(fence), server_us}
end

if op == 'leave' then
  local ticket, token = ARGV[2], ARGV[3]
  local rank = redis.call('ZRANK', queue, ticket)
  dequeue(ticket)
  if live_expiry(token) then
    give_back(token)
  else
    -- The queue moved up: if a permit is free, the new head may take it.
    local count = purge(holders, owners, 'HDEL')
    local queued = purge(waiters, queue, 'ZREM')
    if count == 0 then
      wake(1, queued)
    else
      local limit = current_limit()
      wake(limit - count, queued)
      if rank and rank < limit and count >= limit then wake_next_in_line(limit) end
    end
  end
  return {'OK'}
end

if op == 'inspect' then
  local live = redis.call('ZRANGEBYSCORE', holders, format('(%d', now_ms), '+inf', 'WITHSCORES')
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
  local waiting = redis.call('ZCOUNT', waiters, format('(%d', now_ms), '+inf')
  local fence = tonumber(redis.call('GET', fence_key) or '0')
  return {server_us, fence, limit, waiting, permits}
end

return redis.error_reply('lock_permits: unknown op ' .. tostring(op))
