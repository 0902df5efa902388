-- progress: a running job's report of how far it is, written and announced while its lease
-- holds.
-- KEYS[1] lock:Q:ID  KEYS[2] job:F:ID
-- ARGV[1] token  ARGV[2] progress field  ARGV[3] JSON value  ARGV[4] channel
-- ARGV[5] JSON announcement
-- Returns 1 when written, 0 when the lease is not held (nothing changed).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
