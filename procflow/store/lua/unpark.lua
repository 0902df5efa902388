-- unpark: put a parked parent back on its stage's waiting list (the monitor's safety net,
-- for children that finished without telling their parent).
-- KEYS[1] queue:Q:parked  KEYS[2] queue:Q:waiting  ARGV[1] id
-- Returns 1 when moved, 0 when it was not parked.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
