-- A member's rank and score, read together.
-- KEYS[1]: the sorted set. ARGV[1]: the member. ARGV[2]: 'ZRANK' or 'ZREVRANK'.
-- Answers {rank, score as a string}, or {} when the member is absent.
local rank = redis.call(ARGV[2], KEYS[1], ARGV[1])
if not rank then return {} end
return {rank, redis.call('ZSCORE', KEYS[1], ARGV[1])}
