-- park: a re-leased parent whose children are not all done goes back to waiting for them.
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:parked
-- ARGV[1] id  ARGV[2] token  ARGV[3] lock prefix  ARGV[4] job prefix  ARGV[5] lease field
-- ARGV[6] attempts field (parking gives the lease's attempt back)
-- Returns 1 parked, 0 lease lost.
local id = ARGV[1]
local lock = ARGV[3] .. id
if redis.call('GET', lock) ~= ARGV[2] then return 0 end
redis.call('LREM', KEYS[1], -1, id)
redis.call('DEL', lock)
local job = ARGV[4] .. id
redis.call('HDEL', job, ARGV[5])
pf_uncount(job, ARGV[6])
redis.call('ZADD', KEYS[2], pf_now_ms(), id)
return 1
