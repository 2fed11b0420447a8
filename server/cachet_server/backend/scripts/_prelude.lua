-- Shared helpers (Redis scripts cannot `require`). backend/scripts.py pastes into each
-- script the ones it uses, found by name in its code: one `local` definition per
-- helper, each with its comment lines right above it, defined before any helper that
-- uses it.

-- A cache value's next version: above the last one, and at least Redis's clock
-- in microseconds, so a deleted and re-created key never repeats a version.
local function cachet_next_version(meta_key)
  local last = tonumber(redis.call('HGET', meta_key, 'v') or '0')
  local now = redis.call('TIME')
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  return math.max(last + 1, now_us)
end

local function cachet_int(n)
  return string.format('%.0f', n)
end

-- Waiters of GetOrLease(wait) subscribe to this prefix + the lease key.
local CACHET_FILL_WAKE_PREFIX = 'cachet-fill-wake:'

-- Void a fill lease (a write made the value it would fill stale) and wake the
-- callers waiting for that fill, so they look again at once.
local function cachet_void_lease(lease_key)
  if redis.call('DEL', lease_key) == 1 then
    redis.call('PUBLISH', CACHET_FILL_WAKE_PREFIX .. lease_key, '')
  end
end

-- The result remembered for a request_id (see backend/keys.py `remembered_result`),
-- or nil: a retry within the window answers it again instead of writing twice.
local function cachet_recall(remembered_key)
  local packed = redis.call('GET', remembered_key)
  if packed then return cmsgpack.unpack(packed) end
  return nil
end

local function cachet_remember(remembered_key, window_ms, reply)
  redis.call('SET', remembered_key, cmsgpack.pack(reply), 'PX', window_ms)
end

-- Give the metadata hash exactly the data key's remaining life.
local function cachet_sync_ttl(data_key, meta_key)
  local pttl = redis.call('PTTL', data_key)
  if pttl > 0 then
    redis.call('PEXPIRE', meta_key, pttl)
  elseif pttl == -1 then
    redis.call('PERSIST', meta_key)
  else
    redis.call('DEL', meta_key)
  end
end

-- Record a write of data_key: bump the version, keep the TTLs equal.
local function cachet_touch(data_key, meta_key)
  local version = cachet_int(cachet_next_version(meta_key))
  redis.call('HSET', meta_key, 'v', version)
  cachet_sync_ttl(data_key, meta_key)
  return version
end

-- Delete one cache entry: its value (of any type), metadata and fill lease. A string
-- value written with a stale TTL (meta `s`, see cache_fill) leaves a stale copy
-- behind for that long, for GetOrLease(accept_stale). Answers 1 if the value existed.
local function cachet_delete_entry(data_key, meta_key, lease_key, stale_key)
  local stale_ms = redis.call('HGET', meta_key, 's')
  if stale_ms and redis.call('TYPE', data_key).ok == 'string' then
    redis.call('SET', stale_key, redis.call('GET', data_key), 'PX', stale_ms)
  end
  local existed = redis.call('DEL', data_key)
  redis.call('DEL', meta_key)
  cachet_void_lease(lease_key)
  return existed
end

-- Refuse a float increment whose result a double cannot hold: INCRBYFLOAT and
-- HINCRBYFLOAT add in long double and would store a number (3.4e308) that every
-- reader then sees as infinity. `current` is the stored value (nil: absent).
local function cachet_check_float_sum(current, delta)
  local result = (tonumber(current or '0') or 0) + tonumber(delta)
  if result == math.huge or result == -math.huge or result ~= result then
    return redis.error_reply('ERR increment would produce NaN or Infinity')
  end
  return nil
end
