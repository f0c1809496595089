-- tradebus publish_many: publish.lua for a run of consecutive events of ONE symbol, in one script call.
-- Each event is logged and broadcast exactly as publish.lua does it (XADD ~, heads, optional ZADD,
-- PUBLISH with log_id/prev/prev_t/bus), in order; the script is atomic, so each event's log +
-- broadcast is too (and the run as a whole). Amortises the per-EVALSHA fixed cost over the run.
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, and with log routes KEYS[4] their
-- wake-up messages, KEYS[5..] the wake flags of the routes the run wakes (same {symbol} slot)
-- ARGV[1] log maxlen (approximate), ARGV[2] key prefix, then 4 per event:
--   event JSON, channel, event type, and '' (dispatch not tracked) or anything else (tracked: the
--   pending-dispatch entry is scored with its log id's server time in ms, as redispatch compares)
-- then, with log routes, publish.lua's wake-up arguments (flag TTL, broker db, bus db, 4 per route).
-- Returns {log_id_1, subscribers_1, log_id_2, subscribers_2, ..., woken, unsent} in the order of the events.
local log, heads, pending = KEYS[1], KEYS[2], KEYS[3]
local maxlen, bus = ARGV[1], '","bus":"' .. ARGV[2] .. '",'
local w = #ARGV  -- ARGV[w + 1..]: the wake-up arguments
if #KEYS > 3 then w = #ARGV - 3 - 4 * (#KEYS - 4) end
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
local woken = set_flags(log, w)  -- before the run's first XADD
local prev, prev_t, out = nil, {}, {}  -- prev/prev_t: the heads before each event, read once per run
for i = 3, w, 4 do
  local event, chan, t, score = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', 'type', t, 'event', event)
  local pt = prev_t[t]
  if prev == nil then
    local h = redis.call('HMGET', heads, '_', t)
    prev, pt = h[1] or '', h[2] or ''
  elseif pt == nil then
    pt = redis.call('HGET', heads, t) or ''
  end
  redis.call('HSET', heads, '_', id, t, id)
  if score ~= '' then
    redis.call('ZADD', pending, string.match(id, '^%d+'), id)
  end
  local msg = '{"log_id":"' .. id .. '","prev":"' .. prev .. '","prev_t":"' .. pt .. bus .. string.sub(event, 2)
  out[#out + 1] = id
  out[#out + 1] = redis.call('PUBLISH', chan, msg)
  prev, prev_t[t] = id, id
end
out[#out + 1] = woken
out[#out + 1] = enqueue(w, woken, prev)  -- named after the run's last id
return out
