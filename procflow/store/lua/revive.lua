-- revive: put failed jobs back on their stage's waiting list with a fresh attempt count
-- and stall count (their error history stays).
-- KEYS[1] queue:Q:failed  KEYS[2] queue:Q:waiting
-- ARGV[1] job prefix  ARGV[2] attempts field  ARGV[3] stalls field  ARGV[4..] ids
-- Returns the ids moved.
local moved = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('LREM', KEYS[1], 0, id) > 0 then
    local job = ARGV[1] .. id
    if redis.call('EXISTS', job) == 1 then
      redis.call('HDEL', job, 'done', 'failed', 'failedQueue', 'failedErrorMsg', ARGV[2], ARGV[3])
      redis.call('RPUSH', KEYS[2], id)
      pf_entered(job, KEYS[2])
      moved[#moved + 1] = id
    end
  end
end
return moved
