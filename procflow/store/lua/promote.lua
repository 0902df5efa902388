-- promote: move retries whose time has come from the delayed set to the waiting list (each
-- job noting when: waiting-since:Q).
-- KEYS[1] queue:Q:delayed  KEYS[2] queue:Q:waiting  ARGV[1] most ids to move
-- ARGV[2] job prefix
-- Returns {moved, ms until the next one is due (-1: none left)}.
local now = pf_now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('RPUSH', KEYS[2], unpack(ids))
  for i = 1, #ids do
    local job = ARGV[2] .. ids[i]
    if redis.call('EXISTS', job) == 1 then pf_entered(job, KEYS[2], now) end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
return {#ids, wait}
