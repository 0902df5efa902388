-- cancel: an operator's cancel of one job in stage Q. A waiting, delayed or parked job is
-- taken off its list and marked cancelled at once; a running one is noted in the flow's cancel
-- set for the node whose worker holds it, which then calls this script again with the lease
-- token (after stopping that worker).
-- KEYS[1] queue:Q:waiting  KEYS[2] queue:Q:delayed  KEYS[3] queue:Q:processing
-- KEYS[4] queue:Q:parked  KEYS[5] procflow:F:cancel  KEYS[6] procflow:F:stats:Q; for a child
-- queue only (ARGV[8] not ''): KEYS[7] the parent stage's waiting list, KEYS[8] its parked set
-- ARGV[1] id  ARGV[2] lease token ('' = not taken from a worker)  ARGV[3] job prefix
-- ARGV[4] lock prefix  ARGV[5] JSON of the queue name  ARGV[6] JSON error message
-- ARGV[7] done channel  ARGV[8] children pending field or ''  ARGV[9] lease field
-- Returns 'cancelled', 'running' (the request is noted), 'lost' (the token no longer holds
-- the lock) or 'absent' (no such job in this stage's lists).
local id, token = ARGV[1], ARGV[2]
local job = ARGV[3] .. id
if redis.call('EXISTS', job) == 0 then
  redis.call('SREM', KEYS[5], id)
  return 'absent'
end
if token ~= '' then
  if redis.call('GET', ARGV[4] .. id) ~= token then return 'lost' end
  redis.call('DEL', ARGV[4] .. id)
  redis.call('LREM', KEYS[3], -1, id)
  redis.call('HDEL', job, ARGV[9])
else
  local removed = redis.call('LREM', KEYS[1], 0, id) + redis.call('ZREM', KEYS[2], id)
                  + redis.call('ZREM', KEYS[4], id)
  if removed == 0 then
    if redis.call('LPOS', KEYS[3], id) then
      redis.call('SADD', KEYS[5], id)
      return 'running'
    end
    return 'absent'
  end
end
redis.call('SREM', KEYS[5], id)
redis.call('HSET', job, 'failed', 'true', 'failedQueue', ARGV[5], 'failedErrorMsg', ARGV[6],
           'cancelled', 'true')
pf_count(KEYS[6], 'cancelled')
pf_finished(job, id, ARGV[7], KEYS[7], KEYS[8], ARGV[8])
return 'cancelled'
