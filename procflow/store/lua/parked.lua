-- parked: parents parked for at least a given time, by the server's clock.
-- KEYS[1] queue:Q:parked  ARGV[1] minimum age in ms  ARGV[2] most ids to return
-- Returns the ids.
local cutoff = pf_now_ms() - tonumber(ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[2]))
