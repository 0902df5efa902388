-- spawn: create a parent job's child jobs (each noting when it entered its waiting list:
-- waiting-since:P:C) and park the parent until they are done, in one step, once (a re-leased
-- parent finds its children already made).
-- KEYS[1] queue:Q:processing  KEYS[2] queue:Q:parked
-- KEYS[1+2c] child job key, KEYS[2+2c] child queue's waiting list, for child c = 1..N
-- ARGV[1] parent id  ARGV[2] token  ARGV[3] job prefix  ARGV[4] lock prefix
-- ARGV[5] children jobs field  ARGV[6] JSON list of child keys  ARGV[7] pending field
-- ARGV[8] key ttl (s)  ARGV[9] JSON of the parent's key  ARGV[10] N  ARGV[11] lease field
-- ARGV[12] attempts field (parking gives the lease's attempt back: waiting is not trying)
-- then per child: child id, n, n field/value pairs.
-- Returns 1 parked, 0 lease lost, -1 children exist already (nothing changed).
local id = ARGV[1]
local job = ARGV[3] .. id
local lock = ARGV[4] .. id
if redis.call('GET', lock) ~= ARGV[2] then return 0 end
if redis.call('HEXISTS', job, ARGV[5]) == 1 then return -1 end
local count = tonumber(ARGV[10])
local a = 13
local now = string.format('%.0f', pf_now_ms())
for c = 1, count do
  local child_id = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  local child = KEYS[1 + 2 * c]
  local since = pf_since_field(KEYS[2 + 2 * c])  -- when it entered its waiting list
  if n > 0 then
    redis.call('HSET', child, 'parentJob', ARGV[9], since, now,
               unpack(ARGV, a + 2, a + 1 + 2 * n))
  else
    redis.call('HSET', child, 'parentJob', ARGV[9], since, now)
  end
  redis.call('EXPIRE', child, ARGV[8])
  redis.call('RPUSH', KEYS[2 + 2 * c], child_id)
  a = a + 2 + 2 * n
end
redis.call('HSET', job, ARGV[5], ARGV[6], ARGV[7], count)
redis.call('HDEL', job, ARGV[11])
pf_uncount(job, ARGV[12])
redis.call('LREM', KEYS[1], -1, id)
redis.call('DEL', lock)
redis.call('ZADD', KEYS[2], pf_now_ms(), id)
return 1
