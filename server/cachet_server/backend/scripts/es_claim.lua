-- Claim pending events of a consumer group, moving those that reached the
-- group's delivery limit to the dead-letter stream instead (atomically, so an
-- event is either claimed or dead-lettered, never both, never lost).
--
-- KEYS[1] the stream; KEYS[2] its dead-letter stream and KEYS[3] its policy hash
-- (both absent for a dead-letter stream, which has no policy of its own).
-- ARGV[1] group, ARGV[2] consumer (the new owner), ARGV[3] min idle in ms,
-- ARGV[4] mode: 'scan' (every consumer's pending entries from ARGV[5]),
-- 'own' (only ARGV[2]'s), or 'ids' (exactly ARGV[8..]); ARGV[5] start id,
-- ARGV[6] count, ARGV[7] the stream's name as the caller knows it (recorded
-- in dead letters).
-- Returns {last examined id or '', examined count, {id, fields, deliveries}...,
-- dead-lettered ids, deleted ids}.
local stream, group, consumer, min_idle, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local max_deliveries, dead_max_len = 0, 0
if KEYS[3] then
  local policy = redis.call('HGET', KEYS[3], group)
  if policy then
    local limit, max_len = string.match(policy, '^(%d+):(%d+)$')
    max_deliveries, dead_max_len = tonumber(limit), tonumber(max_len)
  end
end

local pending
if mode == 'ids' then
  pending = {}
  for i = 8, #ARGV do
    local found = redis.call('XPENDING', stream, group, 'IDLE', min_idle, ARGV[i], ARGV[i], 1)
    if found[1] then
      pending[#pending + 1] = found[1]
    end
  end
elseif mode == 'own' then
  pending = redis.call('XPENDING', stream, group, 'IDLE', min_idle, ARGV[5], '+', ARGV[6], consumer)
else
  pending = redis.call('XPENDING', stream, group, 'IDLE', min_idle, ARGV[5], '+', ARGV[6])
end

local now_ns
local function dead_letter(id, owner, deliveries, fields)
  if not now_ns then
    local t = redis.call('TIME')
    now_ns = t[1] .. string.format('%06d', tonumber(t[2])) .. '000'
  end
  local args = {'XADD', KEYS[2]}
  if dead_max_len > 0 then
    args[#args + 1] = 'MAXLEN'
    args[#args + 1] = '~'
    args[#args + 1] = cachet_int(dead_max_len)
  end
  args[#args + 1] = '*'
  local has_time = false
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 5) ~= 'dead.' then
      args[#args + 1] = name
      args[#args + 1] = fields[i + 1]
      if name == 'time' then
        has_time = true
      end
    end
  end
  if not has_time then
    -- An event appended without a time is dated by its id; keep that date.
    args[#args + 1] = 'time'
    args[#args + 1] = string.match(id, '^(%d+)') .. '000000'
  end
  for _, pair in ipairs({
    {'dead.stream', ARGV[7]}, {'dead.id', id}, {'dead.group', group},
    {'dead.consumer', owner}, {'dead.count', cachet_int(deliveries)}, {'dead.time', now_ns},
  }) do
    args[#args + 1] = pair[1]
    args[#args + 1] = pair[2]
  end
  redis.call(unpack(args))
end

local to_claim, deliveries_of, dead, deleted = {}, {}, {}, {}
for _, entry in ipairs(pending) do
  local id, owner, deliveries = entry[1], entry[2], entry[4]
  local found = redis.call('XRANGE', stream, id, id)
  if #found == 0 then
    -- Trimmed or deleted: nothing left to deliver, so the pending entry goes too.
    redis.call('XACK', stream, group, id)
    deleted[#deleted + 1] = id
  elseif max_deliveries > 0 and deliveries >= max_deliveries then
    dead_letter(id, owner, deliveries, found[1][2])
    redis.call('XACK', stream, group, id)
    dead[#dead + 1] = id
  else
    to_claim[#to_claim + 1] = id
    deliveries_of[id] = deliveries + 1
  end
end

local claimed = {}
local chunk = 500
for first = 1, #to_claim, chunk do
  local ids = {}
  for i = first, math.min(first + chunk - 1, #to_claim) do
    ids[#ids + 1] = to_claim[i]
  end
  local got = redis.call('XCLAIM', stream, group, consumer, min_idle, unpack(ids))
  for _, e in ipairs(got) do
    claimed[#claimed + 1] = {e[1], e[2], deliveries_of[e[1]]}
  end
end

local last = ''
if #pending > 0 then
  last = pending[#pending][1]
end
return {last, #pending, claimed, dead, deleted}
