-- Shared by every procflow script: prepended to each one when it is loaded.
-- Key names arrive in KEYS, or as prefixes in ARGV that a job id popped inside the
-- script completes (lock:Q: .. id, job:F: .. id): the naming lives in procflow/store/keys.py.

local function pf_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- procflow's note of when a job entered a stage's waiting list: the job field
-- waiting-since:Q (keys.waiting_since_field), a JSON number, the server's time in ms. Q is
-- read from the list's key queue:Q:waiting (keys.waiting), so that a script that pushes a job
-- notes it without an argument of its own. The oldest-waiting reads use it.
local function pf_since_field(waiting)
  return 'waiting-since:' .. string.sub(waiting, 7, -9)
end

local function pf_entered(job, waiting, now)
  redis.call('HSET', job, pf_since_field(waiting), string.format('%.0f', now or pf_now_ms()))
end

-- Claim a job that is already in the processing list: lock it for this lease, count the
-- attempt, note the holder in the job (lease:Q, so that the monitor can tell a job that was
-- claimed from one BLMOVE moved but nobody claimed), read the fields the stage wants
-- (argv[first_field .. last_field]).
-- Returns {id, attempts, value...}, or {id, -1} when the job hash no longer exists
-- (expired or deleted): such an id is dropped from processing.
local function pf_claim(id, processing, job_prefix, lock_prefix, token, lock_ms,
                        attempts_field, lease_field, argv, first_field, last_field)
  local job = job_prefix .. id
  if redis.call('EXISTS', job) == 0 then
    redis.call('LREM', processing, -1, id)
    return {id, -1}
  end
  redis.call('SET', lock_prefix .. id, token, 'PX', lock_ms)
  local attempts = redis.call('HINCRBY', job, attempts_field, 1)
  redis.call('HSET', job, lease_field, '"' .. token .. '"')
  local reply = {id, attempts}
  if last_field >= first_field then
    local values = redis.call('HMGET', job, unpack(argv, first_field, last_field))
    for i = 1, #values do reply[i + 2] = values[i] end
  end
  return reply
end

-- Give back the attempt a lease counted (the job was not tried: shutdown, parking).
local function pf_uncount(job, attempts_field)
  if tonumber(redis.call('HGET', job, attempts_field) or '0') > 0 then
    redis.call('HINCRBY', job, attempts_field, -1)
  end
end

-- Find the job in a processing list whose lock holds this token (a lease whose reply the
-- holder never saw). O(length of the processing list).
local function pf_find(processing, lock_prefix, token)
  local ids = redis.call('LRANGE', processing, 0, -1)
  for i = #ids, 1, -1 do
    if redis.call('GET', lock_prefix .. ids[i]) == token then return ids[i] end
  end
  return false
end

-- Resolve and check ownership. mode 'token': the lock must hold the token (id may be ''
-- to search by token). mode 'orphan': the id must be in processing with no lock at all.
local function pf_owned(id, token, mode, processing, lock_prefix)
  if mode == 'orphan' then
    if redis.call('EXISTS', lock_prefix .. id) == 1 then return false end
    if not redis.call('LPOS', processing, id) then return false end
    return id
  end
  if id == '' then return pf_find(processing, lock_prefix, token) end
  if redis.call('GET', lock_prefix .. id) ~= token then return false end
  return id
end

-- A child job is done: tell its parent once; the last child puts the parked parent back
-- on its stage's waiting list.
local function pf_notify_parent(job, parent_waiting, parent_parked, pending_field)
  if pending_field == '' then return end
  local ref = redis.call('HGET', job, 'parentJob')
  if not ref then return end
  if redis.call('HSETNX', job, 'parentNotified', 'true') == 0 then return end
  local parent = cjson.decode(ref)
  if type(parent) ~= 'string' or redis.call('EXISTS', parent) == 0 then return end
  local left = redis.call('HINCRBY', parent, pending_field, -1)
  if left <= 0 then
    local parent_id = string.match(parent, '([^:]+)$')
    if redis.call('ZREM', parent_parked, parent_id) == 1 then
      redis.call('RPUSH', parent_waiting, parent_id)
      pf_entered(parent, parent_waiting)
    end
  end
end

-- The job left its flow (finished or failed for good).
local function pf_finished(job, id, channel, parent_waiting, parent_parked, pending_field)
  redis.call('HSET', job, 'done', 'true')
  pf_notify_parent(job, parent_waiting, parent_parked, pending_field)
  redis.call('PUBLISH', channel, id)
end

-- Count an outcome in a stage's stats hash (procflow:F:stats:Q): a total (retried, crashed,
-- cancelled) or a minute's count (c:MINUTE completed, f:MINUTE failed for good; MINUTE = Unix
-- time // 60). Supervisors fold minutes older than a day into the completed/failed totals.
local function pf_count(stats, field)
  redis.call('HINCRBY', stats, field, 1)
end

-- Whether the stage of ``list_key`` (one of its queue:Q:… lists) is paused: procflow's own
-- queue:Q:paused exists (flow.pause). A paused stage leases nothing; what it holds goes on.
local function pf_paused(list_key)
  return redis.call('EXISTS', (string.gsub(list_key, ':[^:]*$', ':paused'))) == 1
end


-- Lease up to k jobs from waiting into processing (one LRANGE, LTRIM and RPUSH for them
-- all), claiming the i-th (from 0) under the token whose number is first's plus i; the
-- claims are appended to ``claims``. ``argv`` is the calling script's ARGV with the common
-- head (ARGV[1..6+f]).
local function pf_claim_many(claims, k, waiting, processing, first, argv, f)
  local ids = redis.call('LRANGE', waiting, 0, k - 1)
  if #ids == 0 then return end
  redis.call('LTRIM', waiting, #ids, -1)
  redis.call('RPUSH', processing, unpack(ids))
  local prefix, n = string.match(first, '^(.*|)(%d+)$')
  n = tonumber(n)
  for i = 1, #ids do
    claims[#claims + 1] = pf_claim(ids[i], processing, argv[1], argv[2], prefix .. (n + i - 1),
                                   argv[3], argv[4], argv[5], argv, 7, 6 + f)
  end
end


-- Complete one job whose lock holds ``held`` (read by the caller, for a whole batch in one
-- MGET): the lease must still hold ``token``; write the result fields argv[first .. last]
-- (pairs), pass the job to ``next_waiting`` (noting when) or, with none, mark it done (the
-- fields say so), tell its parent and announce it; the job forgets when it entered this
-- stage (``waiting``). What it adds to the stage's counts, and the lock to delete, go into
-- ``tally`` (written once per call by pf_tally). Returns 1 done, 0 the lease was lost
-- (nothing changed), -1 the job hash is gone.
local function pf_complete_one(id, held, token, job_prefix, lock_prefix, lease_field,
                               processing, waiting, done_channel, pending_field,
                               parent_waiting, parent_parked, next_waiting, argv, first, last,
                               tally)
  if held ~= token then return 0 end
  local job = job_prefix .. id
  tally.locks[#tally.locks + 1] = lock_prefix .. id
  if redis.call('EXISTS', job) == 0 then
    redis.call('LREM', processing, -1, id)
    return -1
  end
  redis.call('HSET', job, unpack(argv, first, last))
  -- no lease holds it in this stage any more, and it waits here no more
  redis.call('HDEL', job, lease_field, pf_since_field(waiting))
  redis.call('LREM', processing, -1, id)
  if next_waiting == nil then
    pf_notify_parent(job, parent_waiting, parent_parked, pending_field)
    redis.call('PUBLISH', done_channel, id)
    tally.left[#tally.left + 1] = id
  else
    redis.call('RPUSH', next_waiting, id)
    tally.now = tally.now or pf_now_ms()
    pf_entered(job, next_waiting, tally.now)
  end
  tally.completed = tally.completed + 1
  return 1
end

-- A call's completions: their locks deleted (one DEL), counted in ``stats`` under c:MINUTE
-- (one HINCRBY), and those that left the flow noted in ``finished`` (one LPUSH; trimmed to
-- ``kept`` now and then).
local function pf_tally(tally, stats, finished, kept, minute)
  if #tally.locks > 0 then redis.call('DEL', unpack(tally.locks)) end
  if tally.completed > 0 then
    redis.call('HINCRBY', stats, 'c:' .. minute, tally.completed)
  end
  if #tally.left > 0 and redis.call('LPUSH', finished, unpack(tally.left)) > kept + kept / 10 then
    redis.call('LTRIM', finished, 0, kept - 1)
  end
end
