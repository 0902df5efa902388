-- fail: one failed attempt. Retry it (now, or later through the delayed set) while attempts
-- remain, else fail the job for good: done, failed, failedQueue, failedErrorMsg, onto the
-- failed list, parent told. A stall (the job's node or supervisor died under it) is put back
-- without costing an attempt, up to a number of stalls; later ones count as attempts.
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:waiting  KEYS[3] queue:Q:delayed
-- KEYS[4] queue:Q:failed  KEYS[5] procflow:F:stats:Q; for a child queue only (ARGV[14] not
-- ''): KEYS[6] the parent stage's waiting list, KEYS[7] its parked set
-- ARGV[1] id ('' = the job whose lock holds the token)  ARGV[2] token
-- ARGV[3] mode: 'token' (the holder or its supervisor) or 'orphan' (the monitor: no lock)
-- ARGV[4] job prefix  ARGV[5] lock prefix  ARGV[6] JSON of the queue name
-- ARGV[7] attempts field  ARGV[8] errors field  ARGV[9] lease field
-- ARGV[10] JSON failure record  ARGV[11] JSON error message
-- ARGV[12] max attempts  ARGV[13] done channel  ARGV[14] children pending field or ''
-- ARGV[15] the failure's kind ('crash' is counted as a crash too; 'lock-expired' and
-- 'supervisor' are stalls)  ARGV[16] stalls field  ARGV[17] stalls allowed free
-- ARGV[18] n: field/value pairs written with a final failure, ARGV[19 .. 18 + 2n]
-- ARGV[19 + 2n ..] retry delay in ms after attempt 1, 2, ...
-- Returns false (not ours: nothing changed) or {id, outcome, attempts, delay ms} with
-- outcome 'retry', 'stalled' (put back, uncounted), 'failed', 'requeued' (an orphan that
-- was never claimed) or 'missing'.
local id = pf_owned(ARGV[1], ARGV[2], ARGV[3], KEYS[1], ARGV[5])
if not id then return false end
local job = ARGV[4] .. id
redis.call('LREM', KEYS[1], -1, id)
redis.call('DEL', ARGV[5] .. id)
if redis.call('EXISTS', job) == 0 then return {id, 'missing', 0, 0} end
if ARGV[3] == 'orphan' and redis.call('HEXISTS', job, ARGV[9]) == 0 then
  -- moved by BLMOVE but never claimed: it never ran, so it costs no attempt
  redis.call('LPUSH', KEYS[2], id)
  return {id, 'requeued', 0, 0}
end
redis.call('HDEL', job, ARGV[9])
local errors = redis.call('HGET', job, ARGV[8])
if errors and #errors > 2 and string.sub(errors, -1) == ']' then
  errors = string.sub(errors, 1, -2) .. ',' .. ARGV[10] .. ']'
else
  errors = '[' .. ARGV[10] .. ']'
end
redis.call('HSET', job, ARGV[8], errors)
if ARGV[15] == 'crash' then pf_count(KEYS[5], 'crashed') end
local attempts = tonumber(redis.call('HGET', job, ARGV[7]) or '1') or 1
if attempts < 1 then attempts = 1 end
if (ARGV[15] == 'lock-expired' or ARGV[15] == 'supervisor')
    and redis.call('HINCRBY', job, ARGV[16], 1) <= tonumber(ARGV[17]) then
  pf_uncount(job, ARGV[7])
  redis.call('RPUSH', KEYS[2], id)
  pf_entered(job, KEYS[2])
  pf_count(KEYS[5], 'retried')
  return {id, 'stalled', attempts - 1, 0}
end
local pairs_n = tonumber(ARGV[18])
local delays = 18 + 2 * pairs_n
if attempts < tonumber(ARGV[12]) then
  local delay = tonumber(ARGV[delays + attempts]) or 0
  if delay <= 0 then
    redis.call('RPUSH', KEYS[2], id)
    pf_entered(job, KEYS[2])
  else
    redis.call('ZADD', KEYS[3], pf_now_ms() + delay, id)
  end
  pf_count(KEYS[5], 'retried')
  return {id, 'retry', attempts, delay}
end
if pairs_n > 0 then redis.call('HSET', job, unpack(ARGV, 19, delays)) end
redis.call('HSET', job, 'failed', 'true', 'failedQueue', ARGV[6], 'failedErrorMsg', ARGV[11])
redis.call('RPUSH', KEYS[4], id)
pf_count(KEYS[5], 'f:' .. math.floor(pf_now_ms() / 60000))
pf_finished(job, id, ARGV[13], KEYS[6], KEYS[7], ARGV[14])
return {id, 'failed', attempts, 0}
