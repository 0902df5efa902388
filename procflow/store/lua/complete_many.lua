-- complete_many: complete the jobs of a prefetched batch in one call, then lease the next
-- batch (a queue's prefetch, K > 1).
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:waiting  KEYS[3] procflow:F:stats:Q
--   KEYS[4] procflow:F:finished:Q; for a child queue (ARGV[b+2] not ''): KEYS[5] the parent
--   stage's waiting list, KEYS[6] its parked set; then every next stage's waiting list the
--   jobs go to (each named once).
-- ARGV[1 .. b+3] as complete.lua's (b = 7+F: kept, done channel, pending field, K)
-- ARGV[b+4] next token ('' = lease no more)  ARGV[b+5] the current minute  ARGV[b+6] N
-- then per job: id, token, the index in KEYS of its next waiting list (0: it leaves the flow),
-- P, then P field/value pairs.
-- Returns {{status per job}, lease reply, ...} ({{…}, 'paused'}: the stage is paused, nothing
-- leased); statuses as complete.lua's.
local f = tonumber(ARGV[6])
local b = 7 + f
local parent_waiting, parent_parked = nil, nil
if ARGV[b + 2] ~= '' then parent_waiting, parent_parked = KEYS[5], KEYS[6] end
local statuses = {}
local tally = {completed = 0, left = {}, locks = {}}
local count = tonumber(ARGV[b + 6])
local starts, locks = {}, {}
local at = b + 7
for n = 1, count do  -- where each job's entry starts, and its lock (read in one MGET)
  starts[n] = at
  locks[n] = ARGV[2] .. ARGV[at]
  at = at + 4 + 2 * tonumber(ARGV[at + 3])
end
local held = count > 0 and redis.call('MGET', unpack(locks)) or {}
for n = 1, count do
  at = starts[n]
  local id, token, target, pairs = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]),
                                   tonumber(ARGV[at + 3])
  local next_waiting = nil
  if target > 0 then next_waiting = KEYS[target] end
  statuses[n] = pf_complete_one(id, held[n], token, ARGV[1], ARGV[2], ARGV[5], KEYS[1],
                                KEYS[2], ARGV[b + 1], ARGV[b + 2], parent_waiting,
                                parent_parked, next_waiting, ARGV, at + 4, at + 3 + 2 * pairs,
                                tally)
end
pf_tally(tally, KEYS[3], KEYS[4], tonumber(ARGV[b]), ARGV[b + 5])
local reply = {statuses}
if ARGV[b + 4] ~= '' and pf_paused(KEYS[2]) then return {statuses, 'paused'} end
if ARGV[b + 4] ~= '' then
  pf_claim_many(reply, tonumber(ARGV[b + 3]), KEYS[2], KEYS[1], ARGV[b + 4], ARGV, f)
end
return reply
