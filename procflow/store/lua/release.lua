-- release: delete a lock only if it still holds the given value (the monitor's leader lock).
-- KEYS[1] the lock  ARGV[1] holder
-- Returns 1 when deleted, 0 when someone else holds it (or nobody).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
