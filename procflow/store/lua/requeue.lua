-- requeue: give a leased job back to the front of its waiting list without counting the
-- attempt (shutdown, or a lease whose reply was lost).
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:waiting
-- ARGV[1] id ('' = the job whose lock holds the token)  ARGV[2] token
-- ARGV[3] job prefix  ARGV[4] lock prefix  ARGV[5] attempts field  ARGV[6] lease field
-- Returns the id, or false when no job of ours was found.
local id = pf_owned(ARGV[1], ARGV[2], 'token', KEYS[1], ARGV[4])
if not id then return false end
redis.call('LREM', KEYS[1], -1, id)
redis.call('DEL', ARGV[4] .. id)
local job = ARGV[3] .. id
if redis.call('EXISTS', job) == 1 then
  pf_uncount(job, ARGV[5])
  redis.call('HDEL', job, ARGV[6])
  redis.call('LPUSH', KEYS[2], id)
end
return id
