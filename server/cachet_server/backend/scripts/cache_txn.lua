-- Txn (etcd style): comparisons, then one branch of operations, atomically.
-- KEYS: four per distinct user key, all of one slot: data, meta, lease, stale.
-- ARGV[1], ARGV[2], ARGV[3]: how many comparisons, success and failure operations.
-- Then four ARGV per comparison: key number (1-based), target ('exists' | 'value' |
--   'number' | 'version' | 'ttl'), operator ('eq' | 'ne' | 'gt' | 'lt' | 'ge' | 'le'),
--   operand ('1'/'0' for exists, bytes, a number, a version, milliseconds).
-- Then four ARGV per operation, success branch first: kind ('set' | 'del' | 'incr' |
--   'get'), key number, argument (the value to set, the integer to add), ttl_ms (of a
--   set, and of a counter an incr creates).
-- Redis does not roll back a script that fails halfway, so every check that can fail
-- runs first, on a simulation of the branch; the writes that follow cannot fail.
-- Answers {'OK', succeeded (0/1), then per operation: found, value, int value, version}
-- or {reason, where, detail}: reason WRONG_TYPE | NOT_A_NUMBER | OUT_OF_RANGE, where
-- 'compare', 'success' or 'failure' and the 1-based position.

local INT64_MAX = '9223372036854775807'
local INT64_MIN_MAGNITUDE = '9223372036854775808'

-- Decimal digit strings without leading zeros, compared by value.
local function compare_digits(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

local function add_digits(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local sum = carry
    if i > 0 then sum = sum + string.byte(a, i) - 48 end
    if j > 0 then sum = sum + string.byte(b, j) - 48 end
    table.insert(out, 1, sum % 10)
    carry = math.floor(sum / 10)
    i, j = i - 1, j - 1
  end
  return table.concat(out)
end

-- a - b for a >= b.
local function subtract_digits(a, b)
  local out, borrow, i, j = {}, 0, #a, #b
  while i > 0 do
    local digit = string.byte(a, i) - 48 - borrow
    if j > 0 then digit = digit - (string.byte(b, j) - 48) end
    if digit < 0 then digit, borrow = digit + 10, 1 else borrow = 0 end
    table.insert(out, 1, digit)
    i, j = i - 1, j - 1
  end
  local text = string.gsub(table.concat(out), '^0+', '')
  if text == '' then return '0' end
  return text
end

-- A signed 64-bit integer in Redis's own syntax (what INCRBY accepts): sign and
-- magnitude, or nil.
local function parse_int64(text)
  if text == '0' then return 1, '0' end
  if not string.match(text, '^%-?[1-9]%d*$') then return nil end
  local sign, magnitude = 1, text
  if string.sub(text, 1, 1) == '-' then sign, magnitude = -1, string.sub(text, 2) end
  local limit = INT64_MAX
  if sign < 0 then limit = INT64_MIN_MAGNITUDE end
  if compare_digits(magnitude, limit) > 0 then return nil end
  return sign, magnitude
end

-- Exact 64-bit addition of two decimal strings (Lua numbers are doubles, exact only
-- to 2^53); nil on overflow, like INCRBY.
local function add_int64(sign_a, a, sign_b, b)
  local sign, magnitude
  if sign_a == sign_b then
    sign, magnitude = sign_a, add_digits(a, b)
  else
    local order = compare_digits(a, b)
    if order == 0 then return '0' end
    if order > 0 then
      sign, magnitude = sign_a, subtract_digits(a, b)
    else
      sign, magnitude = sign_b, subtract_digits(b, a)
    end
  end
  local limit = INT64_MAX
  if sign < 0 then limit = INT64_MIN_MAGNITUDE end
  if compare_digits(magnitude, limit) > 0 then return nil end
  if sign < 0 then return '-' .. magnitude end
  return magnitude
end

local function parse_number(text)
  if string.find(text, '[xX%s]') then return nil end
  local n = tonumber(text)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

local function order_of(a, b)
  if a < b then return -1 elseif a > b then return 1 end
  return 0
end

local HOLDS = {
  eq = function(o) return o == 0 end,
  ne = function(o) return o ~= 0 end,
  gt = function(o) return o > 0 end,
  lt = function(o) return o < 0 end,
  ge = function(o) return o >= 0 end,
  le = function(o) return o <= 0 end,
}

local n_compare, n_success, n_failure = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function data_of(k) return KEYS[4 * k - 3] end
local function meta_of(k) return KEYS[4 * k - 2] end

-- The state of every key before the transaction: its type, and its value if a string.
local initial = {}
for k = 1, #KEYS / 4 do
  local kind = redis.call('TYPE', data_of(k)).ok
  local state = {kind = kind}
  if kind == 'string' then state.value = redis.call('GET', data_of(k)) end
  initial[k] = state
end

-- Comparisons: all are evaluated, so an error in any of them is always reported.
local succeeded = true
for c = 1, n_compare do
  local base = 3 + 4 * (c - 1)
  local k, target, operator, operand = tonumber(ARGV[base + 1]), ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local state = initial[k]
  local order
  if target == 'exists' then
    local exists = '0'
    if state.kind ~= 'none' then exists = '1' end
    order = exists == operand and 0 or 1
  elseif target == 'version' then
    local version = '0'
    if state.kind ~= 'none' then version = redis.call('HGET', meta_of(k), 'v') or '0' end
    order = compare_digits(version, operand)
  elseif target == 'ttl' then
    order = order_of(redis.call('PTTL', data_of(k)), tonumber(operand))
  else
    if state.kind ~= 'none' and state.kind ~= 'string' then return {'WRONG_TYPE', 'compare', c} end
    if target == 'value' then
      order = state.value == operand and 0 or 1
    else
      local number = 0
      if state.value then
        number = parse_number(state.value)
        if number == nil then return {'NOT_A_NUMBER', 'compare', c} end
      end
      order = order_of(number, tonumber(operand))
    end
  end
  if not HOLDS[operator](order) then succeeded = false end
end

local branch, first, count = 'success', 3 + 4 * n_compare, n_success
if not succeeded then
  branch, first, count = 'failure', 3 + 4 * (n_compare + n_success), n_failure
end

-- Simulate the branch on copies of the states; remember each increment's result.
local simulated, sums = {}, {}
for k, state in pairs(initial) do simulated[k] = {kind = state.kind, value = state.value} end
for n = 1, count do
  local base = first + 4 * (n - 1)
  local kind, k, argument = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3]
  local state = simulated[k]
  if kind == 'del' then
    simulated[k] = {kind = 'none'}
  else
    if state.kind ~= 'none' and state.kind ~= 'string' then return {'WRONG_TYPE', branch, n} end
    if kind == 'set' then
      simulated[k] = {kind = 'string', value = argument}
    elseif kind == 'incr' then
      local sign, magnitude = parse_int64(state.value or '0')
      if sign == nil then return {'NOT_A_NUMBER', branch, n} end
      local by_sign, by_magnitude = parse_int64(argument)
      local sum = add_int64(sign, magnitude, by_sign, by_magnitude)
      if sum == nil then return {'OUT_OF_RANGE', branch, n} end
      sums[n] = sum
      simulated[k] = {kind = 'string', value = sum}
    end
  end
end

-- Apply the branch for real; nothing below can fail.
local out = {'OK', succeeded and 1 or 0}
for n = 1, count do
  local base = first + 4 * (n - 1)
  local kind, k, argument, ttl_ms = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3], ARGV[base + 4]
  local data, meta, lease, stale = data_of(k), meta_of(k), KEYS[4 * k - 1], KEYS[4 * k]
  if kind == 'set' then
    redis.call('SET', data, argument, 'PX', ttl_ms)
    redis.call('HDEL', meta, 'r', 't', 's')
    redis.call('DEL', stale)
    cachet_void_lease(lease)
    for _, item in ipairs({0, '', '0', cachet_touch(data, meta)}) do table.insert(out, item) end
  elseif kind == 'del' then
    for _, item in ipairs({cachet_delete_entry(data, meta, lease, stale), '', '0', '0'}) do
      table.insert(out, item)
    end
  elseif kind == 'incr' then
    if redis.call('EXISTS', data) == 1 then
      redis.call('SET', data, sums[n], 'KEEPTTL')
    else
      redis.call('SET', data, sums[n], 'PX', ttl_ms)
    end
    cachet_void_lease(lease)
    for _, item in ipairs({0, '', sums[n], cachet_touch(data, meta)}) do table.insert(out, item) end
  else
    local value = redis.call('GET', data)
    if value then
      for _, item in ipairs({1, value, '0', redis.call('HGET', meta, 'v') or '0'}) do
        table.insert(out, item)
      end
    else
      for _, item in ipairs({0, '', '0', '0'}) do table.insert(out, item) end
    end
  end
end
return out
