-- Keep only a range of a list and answer its new length, in one step.
-- KEYS[1]: the list. ARGV[1], ARGV[2]: first and last index to keep.
redis.call('LTRIM', KEYS[1], ARGV[1], ARGV[2])
return redis.call('LLEN', KEYS[1])
