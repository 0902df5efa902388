-- claim: lock a job that BLMOVE just moved to processing.
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:waiting
-- ARGV[1] job prefix  ARGV[2] lock prefix  ARGV[3] lock ms  ARGV[4] attempts field
-- ARGV[5] lease field  ARGV[6] F  ARGV[7 .. 6+F] fields to read  ARGV[7+F] token  ARGV[8+F] id
-- Returns false when the job is locked already or no longer in processing (the monitor
-- took it back); 'paused' when the stage is paused (the job goes back to the head of the
-- waiting list, as if BLMOVE had not taken it); else pf_claim's reply.
local f = tonumber(ARGV[6])
local id = ARGV[8 + f]
if redis.call('EXISTS', ARGV[2] .. id) == 1 then return false end
if not redis.call('LPOS', KEYS[1], id, 'RANK', -1) then return false end
if pf_paused(KEYS[2]) then
  redis.call('LREM', KEYS[1], -1, id)
  redis.call('LPUSH', KEYS[2], id)
  return 'paused'
end
return pf_claim(id, KEYS[1], ARGV[1], ARGV[2], ARGV[7 + f], ARGV[3], ARGV[4], ARGV[5], ARGV, 7, 6 + f)
