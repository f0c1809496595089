-- tradebus publish: append to the symbol's log and broadcast, atomically (one round trip).
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, and with log routes KEYS[4] their
-- wake-up messages (hash), KEYS[5..] the wake flags of the routes this event wakes (all in the {symbol} slot)
-- ARGV[1] event JSON, ARGV[2] channel, ARGV[3] event type, ARGV[4] log maxlen (approximate),
-- ARGV[5] '1' to track dispatch, ARGV[6] the publish span's W3C traceparent or '0' (tracing off: nothing added),
-- ARGV[7] key prefix (lets subscribers ignore other tenants' broadcasts on the shared channels),
-- ARGV[8..] with log routes: the wake-up arguments (wake.lua)
-- Returns {log_id, subscribers_reached, woken, unsent}: the log routes (1-based) whose flag was set now,
-- and those whose wake-up the caller must send (its message was not in the hash).
local w, routes = wake_args(4)  -- functions of wake.lua
local woken = set_flags(KEYS[1], 4, w, routes)  -- before the XADD: a new group's '$' is just before this event
local tp = ARGV[6]  -- trace context: a 'tp' field of the entry and of the broadcast, only when traced
local id
if tp == '0' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'type', ARGV[3], 'event', ARGV[1])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'type', ARGV[3], 'event', ARGV[1], 'tp', tp)
end
local prev = redis.call('HMGET', KEYS[2], '_', ARGV[3])
redis.call('HSET', KEYS[2], '_', id, ARGV[3], id)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], string.match(id, '^%d+'), id)
end
local unsent = enqueue(4, w, woken, id)
local msg = '{"log_id":"' .. id .. '","prev":"' .. (prev[1] or '') .. '","prev_t":"' .. (prev[2] or '')
  .. '","bus":"' .. ARGV[7] .. (tp == '0' and '",' or '","tp":"' .. tp .. '",') .. string.sub(ARGV[1], 2)
return {id, redis.call('PUBLISH', ARGV[2], msg), woken, unsent}
