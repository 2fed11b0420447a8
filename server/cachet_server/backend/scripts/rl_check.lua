#!lua
-- Rate-limit decisions: one or more items, every algorithm, all decided at one Redis TIME.
--
-- KEYS:    one state key per item (all in one Cluster slot; an item's key names its
--          algorithm and period, so items of different algorithms never share a key).
-- ARGV[1]: 'each' (every item decided and consumed on its own) or 'all' (all or nothing).
-- ARGV[2..]: 7 per item: algorithm ('fw' | 'swl' | 'swc' | 'tb' | 'gcra'), limit,
--          period_us, capacity (the burst for 'tb'/'gcra', the limit otherwise), hits,
--          consume ('1' / '0' for a dry run: a peek, or an item of a refused group), and
--          shadow ('1' if the rule never denies, so it cannot sink an 'all' group).
-- Reply:   {now_seconds, now_microseconds, group_allowed, then 4 per item:
--          allowed, remaining, reset_after_us, retry_after_us (-1 = never / not denied)}.
--
-- All arithmetic is on integers held in doubles: exact while the products below stay under
-- 2^53 (for the token bucket and GCRA: burst x period_us; for the sliding window counter:
-- limit x period_us). Each algorithm reads its state into a table, decides on the table, and
-- the tables are written back only at the end, so two items on one key see each other's
-- consumption and a refused 'all' group writes nothing.

local function floor_div(a, b)
  local q = math.floor(a / b)
  -- a / b is rounded to a double; step to the exact floor (a and b are exact integers).
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function ceil_div(a, b)
  return -floor_div(-a, b)
end

local function expire_us(key, us)
  redis.call('PEXPIRE', key, math.max(1, ceil_div(us, 1000)))
end

-- One fixed-window item (an Envoy descriptor, an inline or named limit: the common check)
-- is decided here, before the algorithms' tables and closures below are built on every
-- call: fixed_window's arithmetic on one state, so its answer is the general path's ('all'
-- and 'each' agree for one item: a refused item consumes nothing either way).
if #KEYS == 1 and ARGV[2] == 'fw' then
  local clock = redis.call('TIME')
  local sec, usec = tonumber(clock[1]), tonumber(clock[2])
  local now = sec * 1000000 + usec
  local key, limit, period, h = KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
  local v = redis.call('HMGET', key, 'w', 'c')
  local w, c = tonumber(v[1]), tonumber(v[2]) or 0
  local start = floor_div(now, period) * period
  -- A stored window ahead of `start` means Redis time stepped back: keep counting in it.
  if w == nil or w < start then
    w, c = start, 0
  end
  local reset = w + period - now
  if c + h <= limit then
    if ARGV[7] == '1' then
      c = c + h
      redis.call('HSET', key, 'w', cachet_int(w), 'c', cachet_int(c))
      expire_us(key, reset)
    end
    return {sec, usec, 1, 1, limit - c, reset, -1}
  end
  local retry = -1
  if h <= limit then retry = reset end
  local group_allowed = 0
  if ARGV[8] == '1' then group_allowed = 1 end
  return {sec, usec, group_allowed, 0, math.max(0, limit - c), reset, retry}
end

-- Each algorithm: load(key) -> state; decide(state, now, item, consume) -> allowed,
-- remaining, reset_after, retry_after (changing the state only when consume and allowed);
-- save(key, state, now). `item.h` is the cost evaluated (1 for a peek).

-- Fixed window: a counter per window of `period` aligned to the epoch on Redis time.
local fixed_window = {}
function fixed_window.load(key)
  local v = redis.call('HMGET', key, 'w', 'c')
  return {w = tonumber(v[1]), c = tonumber(v[2]) or 0}
end
function fixed_window.decide(st, now, it, consume)
  local start = floor_div(now, it.period) * it.period
  -- A stored window ahead of `start` means Redis time stepped back: keep counting in it.
  if st.w == nil or st.w < start then
    st.w, st.c = start, 0
  end
  local reset = st.w + it.period - now
  st.ttl = reset
  if st.c + it.h <= it.limit then
    if consume then
      st.c = st.c + it.h
      st.dirty = true
    end
    return 1, it.limit - st.c, reset, -1
  end
  local retry = -1
  if it.h <= it.limit then retry = reset end
  return 0, math.max(0, it.limit - st.c), reset, retry
end
function fixed_window.save(key, st, now)
  redis.call('HSET', key, 'w', cachet_int(st.w), 'c', cachet_int(st.c))
  expire_us(key, st.ttl)
end

-- Sliding window log: one sorted-set entry per admitted request, scored by its time. The
-- member "<cumulative hits before it, 20 digits>:<hits>" makes the hits inside any run of
-- entries a subtraction, and keeps members unique and in time order.
local sliding_log = {}
local function parse_entry(member, score)
  return {score = tonumber(score), before = tonumber(string.sub(member, 1, 20)),
          hits = tonumber(string.sub(member, 22))}
end
function sliding_log.load(key)
  local st = {key = key, n = redis.call('ZCARD', key), pending = {}, cum = 0}
  if st.n > 0 then
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local e = parse_entry(last[1], last[2])
    st.cum, st.last = e.before + e.hits, e.score
  end
  return st
end
local function log_entry(st, rank)
  if rank < st.n then
    local v = redis.call('ZRANGE', st.key, rank, rank, 'WITHSCORES')
    return parse_entry(v[1], v[2])
  end
  return st.pending[rank - st.n + 1]
end
function sliding_log.decide(st, now, it, consume)
  -- Never place an entry behind the newest one, even if Redis time stepped back.
  local t = math.max(now, st.last or now)
  local total = st.n + #st.pending
  local first = redis.call('ZCOUNT', st.key, '-inf', t - it.period)
  if first > st.n then first = st.n end
  local base, used = st.cum, 0
  if first < total then
    base = log_entry(st, first).before
    used = st.cum - base
  end
  if used + it.h <= it.limit then
    if consume then
      table.insert(st.pending, {score = t, before = st.cum, hits = it.h})
      st.cum, st.last, st.cutoff, st.dirty = st.cum + it.h, t, t - it.period, true
      used = used + it.h
    end
    local reset = 0
    if used > 0 then reset = st.last + it.period - now end
    st.ttl = reset
    return 1, it.limit - used, reset, -1
  end
  local reset = 0
  if used > 0 then reset = st.last + it.period - now end
  local retry = -1
  if it.h <= it.limit then
    -- The oldest entries must expire until `excess` hits have left the window.
    local excess = used + it.h - it.limit
    local lo, hi = first, total - 1
    while lo < hi do
      local mid = floor_div(lo + hi, 2)
      local e = log_entry(st, mid)
      if e.before + e.hits - base >= excess then hi = mid else lo = mid + 1 end
    end
    retry = log_entry(st, lo).score + it.period - now
  end
  return 0, math.max(0, it.limit - used), reset, retry
end
function sliding_log.save(key, st, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cachet_int(st.cutoff))
  for _, e in ipairs(st.pending) do
    redis.call('ZADD', key, cachet_int(e.score),
      string.format('%020.0f', e.before) .. ':' .. cachet_int(e.hits))
  end
  expire_us(key, st.ttl)
end

-- Sliding window counter: the current window's count plus the previous window's, weighted by
-- the part of the previous window still inside the trailing period. In units of hit x us:
-- used = current x period + previous x (period - elapsed); capacity = limit x period.
local sliding_counter = {}
function sliding_counter.load(key)
  local v = redis.call('HMGET', key, 'w', 'c', 'p')
  return {w = tonumber(v[1]), c = tonumber(v[2]) or 0, p = tonumber(v[3]) or 0}
end
function sliding_counter.decide(st, now, it, consume)
  local P = it.period
  local start = floor_div(now, P) * P
  if st.w == nil then
    st.w, st.c, st.p = start, 0, 0
  elseif st.w < start then
    if st.w == start - P then st.p = st.c else st.p = 0 end
    st.w, st.c = start, 0
  end
  local elapsed = math.max(0, now - st.w)
  local function used_scaled() return st.c * P + st.p * (P - elapsed) end
  local function reset_after()
    if st.c > 0 then return st.w + 2 * P - now end
    if st.p > 0 then return st.w + P - now end
    return 0
  end
  local capacity = it.limit * P
  if used_scaled() + it.h * P <= capacity then
    if consume then
      st.c = st.c + it.h
      st.dirty = true
    end
    st.ttl = reset_after()
    return 1, floor_div(capacity - used_scaled(), P), st.ttl, -1
  end
  local remaining = math.max(0, floor_div(capacity - used_scaled(), P))
  local retry = -1
  if it.h <= it.limit then
    local room = it.limit - st.c - it.h
    if room >= 0 then
      -- Within this window, once previous x (period - elapsed) <= room x period.
      retry = st.w + P - floor_div(room * P, st.p) - now
    else
      -- In the next window this window's count becomes the previous one.
      retry = st.w + P + math.max(0, P - floor_div((it.limit - it.h) * P, st.c)) - now
    end
  end
  return 0, remaining, reset_after(), retry
end
function sliding_counter.save(key, st, now)
  redis.call('HSET', key, 'w', cachet_int(st.w), 'c', cachet_int(st.c), 'p', cachet_int(st.p))
  expire_us(key, st.ttl)
end

-- Token bucket: capacity `burst`, refilled continuously at `limit` per `period`. Tokens are
-- counted in units of 1/period_us of a token, so a refill of `limit` units per microsecond
-- is exact: one token = period_us units, a full bucket = burst x period_us units.
local token_bucket = {}
function token_bucket.load(key)
  local v = redis.call('HMGET', key, 's', 't')
  return {s = tonumber(v[1]), t = tonumber(v[2])}
end
function token_bucket.decide(st, now, it, consume)
  local P, full = it.period, it.capacity * it.period
  local level = full
  if st.s ~= nil then
    local missing = full - st.s
    local elapsed = math.max(0, now - st.t)
    level = st.s
    if elapsed * it.limit >= missing then level = full else level = st.s + elapsed * it.limit end
  end
  local need = it.h * P
  if level >= need then
    if consume then
      level = level - need
      st.s, st.t, st.dirty = level, math.max(now, st.t or now), true
    end
    st.ttl = ceil_div(full - level, it.limit)
    return 1, floor_div(level, P), st.ttl, -1
  end
  local retry = -1
  if it.h <= it.capacity then retry = ceil_div(need - level, it.limit) end
  return 0, floor_div(level, P), ceil_div(full - level, it.limit), retry
end
function token_bucket.save(key, st, now)
  redis.call('HSET', key, 's', cachet_int(st.s), 't', cachet_int(st.t))
  expire_us(key, st.ttl)
end

-- GCRA: one theoretical arrival time (TAT). Each hit moves it `period / limit` later; a
-- request is admitted while TAT - now stays within burst x period / limit. The TAT is kept
-- as "<microseconds>:<remainder in 1/limit us>", so the emission interval is never rounded.
local gcra = {}
function gcra.load(key)
  local v = redis.call('GET', key)
  if not v then return {} end
  local sep = string.find(v, ':', 1, true)
  return {tat = tonumber(string.sub(v, 1, sep - 1)), rem = tonumber(string.sub(v, sep + 1))}
end
function gcra.decide(st, now, it, consume)
  local L, P = it.limit, it.period
  local tolerance = it.capacity * P
  -- How far the TAT is ahead of now, in 1/limit us (0 when it lies in the past).
  local ahead = 0
  if st.tat ~= nil and st.tat >= now then ahead = (st.tat - now) * L + st.rem end
  local after = ahead + it.h * P
  if after <= tolerance then
    if consume then
      ahead = after
      local whole = floor_div(ahead, L)
      st.tat, st.rem, st.dirty = now + whole, ahead - whole * L, true
    end
    st.ttl = ceil_div(ahead, L)
    return 1, floor_div(tolerance - ahead, P), st.ttl, -1
  end
  local retry = -1
  if it.h <= it.capacity then retry = ceil_div(after - tolerance, L) end
  return 0, math.max(0, floor_div(tolerance - ahead, P)), ceil_div(ahead, L), retry
end
function gcra.save(key, st, now)
  redis.call('SET', key, cachet_int(st.tat) .. ':' .. cachet_int(st.rem),
    'PX', math.max(1, ceil_div(st.ttl, 1000)))
end

local algorithms = {fw = fixed_window, swl = sliding_log, swc = sliding_counter,
                    tb = token_bucket, gcra = gcra}

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local mode = ARGV[1]

local items = {}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 7
  local algorithm = algorithms[ARGV[a]]
  if algorithm == nil then return redis.error_reply('ERR unknown rate-limit algorithm') end
  items[i] = {key = KEYS[i], algorithm = algorithm, limit = tonumber(ARGV[a + 1]),
              period = tonumber(ARGV[a + 2]), capacity = tonumber(ARGV[a + 3]),
              h = tonumber(ARGV[a + 4]), consume = ARGV[a + 5] == '1', shadow = ARGV[a + 6] == '1'}
end

-- The reply, head first: {now_seconds, now_microseconds, group_allowed (set last), items...}.
local function decide_all(consume_allowed)
  local states, group_allowed = {}, 1
  local reply = {tonumber(clock[1]), tonumber(clock[2]), 0}
  for i, it in ipairs(items) do
    local st = states[it.key]
    if st == nil then
      st = it.algorithm.load(it.key)
      states[it.key] = st
    end
    local allowed, remaining, reset, retry =
      it.algorithm.decide(st, now, it, it.consume and consume_allowed)
    if allowed == 0 and not it.shadow then group_allowed = 0 end
    local r = i * 4
    reply[r], reply[r + 1], reply[r + 2], reply[r + 3] = allowed, remaining, reset, retry
  end
  return states, reply, group_allowed
end

local states, reply, group_allowed = decide_all(true)
if mode == 'all' and group_allowed == 0 then
  -- Nothing is consumed: report every item against the untouched state.
  states, reply = decide_all(false)
else
  for i, it in ipairs(items) do
    local st = states[it.key]
    if st.dirty then
      it.algorithm.save(it.key, st, now)
      st.dirty = false
    end
  end
end
-- The verdict of the pass that decided (a refused group's dry run passes item by item).
reply[3] = group_allowed
return reply
