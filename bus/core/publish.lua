-- tradebus publish: append to the symbol's log and broadcast, atomically (one round trip).
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, and with log routes KEYS[4] their
-- wake-up messages (hash), KEYS[5..] the wake flags of the routes this event wakes (all in the {symbol} slot)
-- ARGV[1] event JSON, ARGV[2] channel, ARGV[3] event type, ARGV[4] log maxlen (approximate),
-- ARGV[5] '1' to track dispatch, ARGV[6] unused (the entry's score is its log id's server time, ms),
-- ARGV[7] key prefix (lets subscribers ignore other tenants' broadcasts on the shared channels),
-- ARGV[8..] with log routes (bus/dispatch/logroutes/wake.py): flag TTL ms, broker db ('' when the caller
--   sends the wake-ups: a separate broker), bus db, then 4 per route: group, queue key, message field,
--   message ('' once stored in KEYS[4]: the field names it)
-- Returns {log_id, subscribers_reached, woken, unsent}: the log routes (1-based) whose flag was set now,
-- and those whose wake-up the caller must send (its message was not in the hash).
local function ensure_groups(log, names)
  -- groups of log routes woken now: a new one starts at '$' (before this XADD: this event on) and counts
  -- the entries before it as read, so Redis can tell its lag exactly after trimming (Race 4)
  local exists, have, added = redis.call('EXISTS', log) == 1, {}, 0
  if exists then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', log)) do have[g[2]] = true end
  end
  for _, name in ipairs(names) do
    if not have[name] then
      if exists and added == 0 then
        local s = redis.call('XINFO', 'STREAM', log)
        for j = 1, #s, 2 do if s[j] == 'entries-added' then added = s[j + 1] end end
      end
      if redis.pcall('XGROUP', 'CREATE', log, name, '$', 'MKSTREAM', 'ENTRIESREAD', added).err then
        redis.call('XGROUP', 'CREATE', log, name, '$', 'MKSTREAM')  -- Redis 6.2: no ENTRIESREAD, no lag
      end
    end
  end
end
local function set_flags(log, w)  -- SET NX each log route's flag; the routes whose flag was set now
  local woken, new = {}, {}
  for r = 1, #KEYS - 4 do
    if ARGV[w + 4 * r + 3] ~= '' then redis.call('HSET', KEYS[4], ARGV[w + 4 * r + 2], ARGV[w + 4 * r + 3]) end
    if redis.call('SET', KEYS[4 + r], '1', 'NX', 'PX', ARGV[w + 1]) then
      woken[#woken + 1], new[#new + 1] = r, ARGV[w + 4 * r]
    end
  end
  if #new > 0 then ensure_groups(log, new) end
  return woken
end
local function enqueue(w, woken, id)  -- same-server broker: LPUSH the wake-ups, named after id
  local msgs, unsent = {}, {}  -- unsent: its message is missing from the hash (the caller sends it)
  if #woken == 0 or ARGV[w + 2] == '' then return unsent end
  for _, r in ipairs(woken) do
    local m = redis.call('HGET', KEYS[4], ARGV[w + 4 * r + 2])
    if m then msgs[#msgs + 1] = {ARGV[w + 4 * r + 1], (string.gsub(m, '@@ID@@', id))} else unsent[#unsent + 1] = r end
  end
  redis.call('SELECT', ARGV[w + 2])
  for _, m in ipairs(msgs) do redis.call('LPUSH', m[1], m[2]) end
  redis.call('SELECT', ARGV[w + 3])
  return unsent
end
local woken = set_flags(KEYS[1], 7)  -- before the XADD: a new group's '$' is just before this event
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'type', ARGV[3], 'event', ARGV[1])
local prev = redis.call('HMGET', KEYS[2], '_', ARGV[3])
redis.call('HSET', KEYS[2], '_', id, ARGV[3], id)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], string.match(id, '^%d+'), id)
end
local unsent = enqueue(7, woken, id)
local msg = '{"log_id":"' .. id .. '","prev":"' .. (prev[1] or '') .. '","prev_t":"' .. (prev[2] or '')
  .. '","bus":"' .. ARGV[7] .. '",' .. string.sub(ARGV[1], 2)
return {id, redis.call('PUBLISH', ARGV[2], msg), woken, unsent}
