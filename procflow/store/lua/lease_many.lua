-- lease_many: move up to K waiting jobs to processing and claim each under its own token, in
-- one step (a queue's prefetch).
-- KEYS[1] queue:Q:waiting   KEYS[2] queue:Q:processing
-- ARGV[1] job prefix  ARGV[2] lock prefix  ARGV[3] lock ms  ARGV[4] attempts field
-- ARGV[5] lease field  ARGV[6] F  ARGV[7 .. 6+F] fields to read  ARGV[7+F] the first token
-- ARGV[8+F] K. The i-th job (from 0) is claimed under the first token's number plus i.
-- Returns a list of pf_claim replies (empty when nothing waits), 'paused' when the stage is
-- paused.
if pf_paused(KEYS[1]) then return 'paused' end
local f = tonumber(ARGV[6])
local first, k = ARGV[7 + f], tonumber(ARGV[8 + f])
local claims = {}
pf_claim_many(claims, k, KEYS[1], KEYS[2], first, ARGV, f)
return claims
