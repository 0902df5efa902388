-- renew: extend a lock that still holds the given token (job leases, the monitor's leader lock).
-- KEYS[1] the lock  ARGV[1] token  ARGV[2] new time to live in ms
-- Returns 1 when extended, 0 when the lock is gone or held by someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
