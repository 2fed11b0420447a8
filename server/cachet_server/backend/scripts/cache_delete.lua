-- Delete user keys of one slot with everything cachet keeps beside them.
-- KEYS: groups of ARGV[1] keys each; the first of each group is the data key.
-- Answers how many data keys existed.
local group = tonumber(ARGV[1])
local deleted = 0
for i = 1, #KEYS, group do
  deleted = deleted + redis.call('DEL', KEYS[i])
  for j = i + 1, i + group - 1 do
    redis.call('DEL', KEYS[j])
  end
end
return deleted
