-- Delete user keys of one slot with everything cachet keeps beside them, voiding
-- their outstanding fill leases.
-- KEYS: groups of four: data, meta, lease, stale.
-- ARGV[1]: '' deletes every entry. A tag deletes only the entries whose metadata
--          still carries that tag (InvalidateTags): a tag index may hold keys that
--          expired or were rewritten without the tag since, and those must survive.
-- Answers how many values existed and were deleted.
local only_tag = ARGV[1]
local deleted = 0
for i = 1, #KEYS, 4 do
  local selected = true
  if only_tag ~= '' then
    local tags = redis.call('HGET', KEYS[i + 1], 't')
    selected = tags ~= false
      and string.find('\n' .. tags .. '\n', '\n' .. only_tag .. '\n', 1, true) ~= nil
  end
  if selected then
    deleted = deleted + cachet_delete_entry(KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3])
  end
end
return deleted
