-- complete: write the result, pass the job on (noting when it entered the next stage's
-- waiting list: waiting-since:NEXT) or mark it done, then lease the next job.
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:waiting  KEYS[3] procflow:F:stats:Q
--   KEYS[4] procflow:F:finished:Q (the latest jobs that left the flow here, capped); for a
--   child queue (its parent's pending field ARGV[b+2] is not ''): KEYS[5] the parent stage's
--   waiting list, KEYS[6] its parked set; then, unless the job leaves the flow, the next
--   stage's waiting list last.
--   Every KEY is a real key: no placeholder (Redis Cluster and ACL key patterns check them).
-- ARGV[1] job prefix  ARGV[2] lock prefix  ARGV[3] lock ms  ARGV[4] attempts field
-- ARGV[5] lease field  ARGV[6] F  ARGV[7 .. 6+F] fields to read for the next job
-- then, from b = 7+F: ARGV[b] how many ids KEYS[4] keeps  ARGV[b+1] done channel
-- ARGV[b+2] children pending field of the parent stage ('' unless a child queue)
-- ARGV[b+3] K, how many jobs the next lease takes (the queue's prefetch)
-- ARGV[b+4] id  ARGV[b+5] token  ARGV[b+6] next token ('' = do not lease another; with K > 1
-- the i-th job is claimed under its number plus i)
-- ARGV[b+7] the current minute (Unix time // 60, the worker's clock: counted in KEYS[3] as
-- c:MINUTE)  ARGV[b+8 ..] field/value pairs to write: the result's, then completed-queue (and
-- done = true when the job leaves the flow) last, so that procflow's own fields win
-- Returns {status}, {status, 'paused'} (the stage is paused: nothing leased) or
-- {status, lease reply, ...} (one lease reply per job leased); status 1 done, 0 the lease was lost (nothing
-- changed), -1 the job hash is gone.
local f = tonumber(ARGV[6])
local b = 7 + f
local id, token = ARGV[b + 4], ARGV[b + 5]
local parent_waiting, parent_parked, next_waiting = nil, nil, KEYS[5]
if ARGV[b + 2] ~= '' then
  parent_waiting, parent_parked, next_waiting = KEYS[5], KEYS[6], KEYS[7]
end
local tally = {completed = 0, left = {}, locks = {}}
local held = redis.call('GET', ARGV[2] .. id)
local status = pf_complete_one(id, held, token, ARGV[1], ARGV[2], ARGV[5], KEYS[1], KEYS[2],
                               ARGV[b + 1], ARGV[b + 2], parent_waiting, parent_parked,
                               next_waiting, ARGV, b + 8, #ARGV, tally)
pf_tally(tally, KEYS[3], KEYS[4], tonumber(ARGV[b]), ARGV[b + 7])
local next_token = ARGV[b + 6]
if next_token ~= '' and pf_paused(KEYS[2]) then return {status, 'paused'} end
if next_token ~= '' then
  local k = tonumber(ARGV[b + 3])
  if k > 1 then
    local reply = {status}
    pf_claim_many(reply, k, KEYS[2], KEYS[1], next_token, ARGV, f)
    return reply
  end
  local next_id = redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT')
  if next_id then
    return {status, pf_claim(next_id, KEYS[1], ARGV[1], ARGV[2], next_token, ARGV[3], ARGV[4],
                             ARGV[5], ARGV, 7, 6 + f)}
  end
end
return {status}
