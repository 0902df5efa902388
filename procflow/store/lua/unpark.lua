-- unpark: put a parked parent back on its stage's waiting list (the monitor's safety net,
-- for children that finished without telling their parent).
-- KEYS[1] queue:Q:parked  KEYS[2] queue:Q:waiting  ARGV[1] id  ARGV[2] job prefix
-- Returns 1 when moved (noting when: waiting-since:Q), 0 when it was not parked.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  if redis.call('EXISTS', ARGV[2] .. ARGV[1]) == 1 then pf_entered(ARGV[2] .. ARGV[1], KEYS[2]) end
  return 1
end
return 0
