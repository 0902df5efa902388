-- fail: one failed attempt. Retry it (now, or later through the delayed set) while attempts
-- remain, else fail the job for good: done, failed, failedQueue, failedErrorMsg, onto the
-- failed list, parent told. A stall (the job's node or supervisor died under it) is put back
-- without costing an attempt, up to a number of stalls; later ones count as attempts.
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:waiting  KEYS[3] queue:Q:delayed
-- KEYS[4] queue:Q:failed  KEYS[5] procflow:F:stats:Q; for a child queue only (the stage's
-- pendingField not ''): KEYS[6] the parent stage's waiting list, KEYS[7] its parked set
-- ARGV[1] id ('' = the job whose lock holds the token)  ARGV[2] token
-- ARGV[3] mode: 'token' (the holder or its supervisor) or 'orphan' (the monitor: no lock)
-- ARGV[4] the stage, named options in one JSON object (packed once per session):
--   jobPrefix, lockPrefix, queueJson (JSON of the queue name), attemptsField, errorsField,
--   leaseField, stallsField, doneChannel, pendingField (children pending field of the parent
--   stage, or '')
-- ARGV[5] the attempt, named options in one JSON object: kind ('crash' is counted as a crash
--   too; 'lock-expired' and 'supervisor' are stalls), maxAttempts, maxStalls (stalls allowed
--   free), delays (retry delay in ms after attempt 1, 2, ...), final (field/value pairs
--   written with a final failure, flat)
-- ARGV[6] JSON failure record  ARGV[7] JSON error message (both written as they are)
-- Returns false (not ours: nothing changed) or {id, outcome, attempts, delay ms} with
-- outcome 'retry', 'stalled' (put back, uncounted), 'failed', 'requeued' (an orphan that
-- was never claimed) or 'missing'.
local stage = cjson.decode(ARGV[4])
local attempt = cjson.decode(ARGV[5])
local id = pf_owned(ARGV[1], ARGV[2], ARGV[3], KEYS[1], stage.lockPrefix)
if not id then return false end
local job = stage.jobPrefix .. id
redis.call('LREM', KEYS[1], -1, id)
redis.call('DEL', stage.lockPrefix .. id)
if redis.call('EXISTS', job) == 0 then return {id, 'missing', 0, 0} end
if ARGV[3] == 'orphan' and redis.call('HEXISTS', job, stage.leaseField) == 0 then
  -- moved by BLMOVE but never claimed: it never ran, so it costs no attempt
  redis.call('LPUSH', KEYS[2], id)
  return {id, 'requeued', 0, 0}
end
redis.call('HDEL', job, stage.leaseField)
local errors = redis.call('HGET', job, stage.errorsField)
if errors and #errors > 2 and string.sub(errors, -1) == ']' then
  errors = string.sub(errors, 1, -2) .. ',' .. ARGV[6] .. ']'
else
  errors = '[' .. ARGV[6] .. ']'
end
redis.call('HSET', job, stage.errorsField, errors)
if attempt.kind == 'crash' then pf_count(KEYS[5], 'crashed') end
local attempts = tonumber(redis.call('HGET', job, stage.attemptsField) or '1') or 1
if attempts < 1 then attempts = 1 end
if (attempt.kind == 'lock-expired' or attempt.kind == 'supervisor')
    and redis.call('HINCRBY', job, stage.stallsField, 1) <= attempt.maxStalls then
  pf_uncount(job, stage.attemptsField)
  redis.call('RPUSH', KEYS[2], id)
  pf_entered(job, KEYS[2])
  pf_count(KEYS[5], 'retried')
  return {id, 'stalled', attempts - 1, 0}
end
if attempts < attempt.maxAttempts then
  local delay = attempt.delays[attempts] or 0
  if delay <= 0 then
    redis.call('RPUSH', KEYS[2], id)
    pf_entered(job, KEYS[2])
  else
    redis.call('ZADD', KEYS[3], pf_now_ms() + delay, id)
  end
  pf_count(KEYS[5], 'retried')
  return {id, 'retry', attempts, delay}
end
if #attempt.final > 0 then redis.call('HSET', job, unpack(attempt.final)) end
redis.call('HSET', job, 'failed', 'true', 'failedQueue', stage.queueJson,
           'failedErrorMsg', ARGV[7])
redis.call('RPUSH', KEYS[4], id)
pf_count(KEYS[5], 'f:' .. math.floor(pf_now_ms() / 60000))
pf_finished(job, id, stage.doneChannel, KEYS[6], KEYS[7], stage.pendingField)
return {id, 'failed', attempts, 0}
