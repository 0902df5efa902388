-- trimstats: fold a stage's per-minute counts older than ARGV[1] (a minute, Unix time // 60)
-- into its totals: c:MINUTE into completed, f:MINUTE into failed; the minute fields go.
-- KEYS[1] procflow:F:stats:Q   Returns how many minute fields were folded.
local oldest = tonumber(ARGV[1])
local flat = redis.call('HGETALL', KEYS[1])
local folded, completed, failed, old = 0, 0, 0, {}
for i = 1, #flat, 2 do
  local kind, minute = string.match(flat[i], '^([cf]):(%d+)$')
  if kind and tonumber(minute) < oldest then
    if kind == 'c' then completed = completed + tonumber(flat[i + 1]) else failed = failed + tonumber(flat[i + 1]) end
    old[#old + 1] = flat[i]
    folded = folded + 1
  end
end
if folded > 0 then
  redis.call('HINCRBY', KEYS[1], 'completed', completed)
  redis.call('HINCRBY', KEYS[1], 'failed', failed)
  redis.call('HDEL', KEYS[1], unpack(old))
end
return folded
