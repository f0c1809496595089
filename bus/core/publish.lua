-- tradebus publish: append to the symbol's log and broadcast, atomically (one round trip).
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, KEYS[4..] wake flags of the log
-- routes this event wakes (all in the same {symbol} slot)
-- ARGV[1] event JSON, ARGV[2] channel, ARGV[3] event type, ARGV[4] log maxlen (approximate),
-- ARGV[5] '1' to track dispatch, ARGV[6] unused (the entry's score is its log id's server time, ms),
-- ARGV[7] key prefix (lets subscribers ignore other tenants' broadcasts on the shared channels),
-- ARGV[8..] with KEYS[4..] (bus/dispatch/logroutes/wake.py): flag TTL ms, broker db ('' when the caller
--   sends the wake-ups: a separate broker), bus db, then per log route: group, queue key, wake-up message
-- Returns {log_id, subscribers_reached, woken}: woken lists the log routes (1-based) whose flag was set now.
local function ensure_groups(log, names)
  -- the groups of the log routes woken now: a new one starts at '$' (this event on), and says how many
  -- entries it counts as read, so Redis can tell its lag exactly after trimming (Race 4)
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
local woken, groups = {}, {}
for i = 4, #KEYS do  -- log routes: one wake-up per (route, symbol) while one is pending
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[8]) then
    woken[#woken + 1], groups[#groups + 1] = i - 3, ARGV[8 + 3 * (i - 3)]
  end
end
if #groups > 0 then ensure_groups(KEYS[1], groups) end  -- before the XADD: '$' is just before this event
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'type', ARGV[3], 'event', ARGV[1])
local prev = redis.call('HMGET', KEYS[2], '_', ARGV[3])
redis.call('HSET', KEYS[2], '_', id, ARGV[3], id)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], string.match(id, '^%d+'), id)
end
if #woken > 0 and ARGV[9] ~= '' then  -- the broker is a database of this server: enqueue in this step
  redis.call('SELECT', ARGV[9])
  for _, r in ipairs(woken) do
    redis.call('LPUSH', ARGV[9 + 3 * r], (string.gsub(ARGV[10 + 3 * r], '@@ID@@', id)))
  end
  redis.call('SELECT', ARGV[10])
end
local msg = '{"log_id":"' .. id .. '","prev":"' .. (prev[1] or '') .. '","prev_t":"' .. (prev[2] or '')
  .. '","bus":"' .. ARGV[7] .. '",' .. string.sub(ARGV[1], 2)
return {id, redis.call('PUBLISH', ARGV[2], msg), woken}
