-- tradebus publish_many: publish.lua for a run of consecutive events of ONE symbol, in one script call.
-- Each event is logged and broadcast exactly as publish.lua does it (XADD ~, heads, optional ZADD,
-- PUBLISH with log_id/prev/prev_t/bus), in order; the script is atomic, so each event's log +
-- broadcast is too (and the run as a whole). Amortises the per-EVALSHA fixed cost over the run.
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, and with log routes KEYS[4] their
-- wake-up messages, KEYS[5..] the wake flags of the routes the run wakes (same {symbol} slot)
-- ARGV[1] log maxlen (approximate), ARGV[2] key prefix, then 4 per event:
--   event JSON, channel, event type, and '' (dispatch not tracked) or anything else (tracked: the
--   pending-dispatch entry is scored with its log id's server time in ms, as redispatch compares)
-- then, with log routes, the wake-up arguments (wake.lua).
-- Returns {log_id_1, subscribers_1, log_id_2, subscribers_2, ..., woken, unsent} in the order of the events.
local log, heads, pending = KEYS[1], KEYS[2], KEYS[3]
local maxlen, bus = ARGV[1], '","bus":"' .. ARGV[2] .. '",'
local w, routes = wake_args(4)  -- functions of wake.lua; ARGV[w + 1..]: the wake-up arguments
local woken = set_flags(log, 4, w, routes)  -- before the run's first XADD
local prev, prev_t, n, out = nil, {}, 0, {}  -- prev/prev_t/n: the heads before each event, read once per run
for i = 3, w, 4 do
  local event, chan, t, score = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local pt = prev_t[t]
  if prev == nil then  -- heads: '_', one field per type, '#' the entries numbered (publish.lua)
    local h = redis.call('HMGET', heads, '_', t, '#')
    prev, pt, n = h[1] or '', h[2] or '', tonumber(h[3]) or 0
  elseif pt == nil then
    pt = redis.call('HGET', heads, t) or ''
  end
  n = n + 1
  local ns = tostring(n)  -- as text once (each number argument is formatted)
  local id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', 'type', t, 'event', event, 'n', ns)
  redis.call('HSET', heads, '_', id, t, id, '#', ns)
  if score ~= '' then
    redis.call('ZADD', pending, string.match(id, '^%d+'), id)
  end
  local msg = '{"log_id":"' .. id .. '","n":' .. ns .. ',"prev":"' .. prev .. '","prev_t":"' .. pt .. bus .. string.sub(event, 2)
  out[#out + 1] = id
  out[#out + 1] = redis.call('PUBLISH', chan, msg)
  prev, prev_t[t] = id, id
end
out[#out + 1] = woken
out[#out + 1] = enqueue(4, w, woken, prev)  -- named after the run's last id
return out
