-- lead: take a lock if it is free, or extend it if the holder has it already, in one step
-- (the monitor's leadership: every supervisor of a flow asks once a round, leader or not).
-- KEYS[1] the lock  ARGV[1] the holder  ARGV[2] time to live in ms
-- Returns 1 when the holder has the lock now, 0 when someone else holds it.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
