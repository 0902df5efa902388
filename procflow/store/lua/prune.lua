-- prune: drop from a failed list the ids whose job hash has expired (or was deleted), so
-- that the list, its count and the jobs agree. O(ids scanned).
-- KEYS[1] queue:Q:failed  ARGV[1] job prefix  ARGV[2] most ids to scan (from the oldest)
-- Returns how many ids were dropped.
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local dropped = 0
for i = 1, #ids do
  if redis.call('EXISTS', ARGV[1] .. ids[i]) == 0 then
    dropped = dropped + redis.call('LREM', KEYS[1], 0, ids[i])
  end
end
return dropped
