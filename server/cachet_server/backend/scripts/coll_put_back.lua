-- Put values a cancelled ListPop had taken back at the end they came from,
-- ahead of the others, so the list reads as if they had never been popped.
-- KEYS[1]: the list. KEYS[2] (optional): the call's holding list, whose values
-- (moved there by BLMOVE) are put back and which is then deleted.
-- ARGV[1]: 'LEFT' or 'RIGHT'. ARGV[2]: TTL in ms for a list this re-creates
-- (the pop had emptied and so deleted it). ARGV[3..]: values taken, in pop order.
-- Answers how many values were put back.
local list, where, ttl_ms = KEYS[1], ARGV[1], ARGV[2]
local values = {}
if KEYS[2] then
  values = redis.call('LRANGE', KEYS[2], 0, -1)
  redis.call('DEL', KEYS[2])
end
for i = 3, #ARGV do values[#values + 1] = ARGV[i] end
if #values == 0 then return 0 end
local existed = redis.call('EXISTS', list)
local command = where == 'LEFT' and 'LPUSH' or 'RPUSH'
-- The first value popped goes back last, so it ends up outermost again.
for i = #values, 1, -1 do redis.call(command, list, values[i]) end
if existed == 0 then redis.call('PEXPIRE', list, ttl_ms) end
return #values
