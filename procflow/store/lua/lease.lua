-- lease: move the next waiting job to processing and claim it, in one step.
-- KEYS[1] queue:Q:waiting   KEYS[2] queue:Q:processing
-- ARGV[1] job prefix  ARGV[2] lock prefix  ARGV[3] lock ms  ARGV[4] attempts field
-- ARGV[5] lease field  ARGV[6] F  ARGV[7 .. 6+F] fields to read  ARGV[7+F] token
-- Returns false when nothing waits, 'paused' when the stage is paused, else pf_claim's reply.
if pf_paused(KEYS[1]) then return 'paused' end
local f = tonumber(ARGV[6])
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if not id then return false end
return pf_claim(id, KEYS[2], ARGV[1], ARGV[2], ARGV[7 + f], ARGV[3], ARGV[4], ARGV[5], ARGV, 7, 6 + f)
