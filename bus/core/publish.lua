-- tradebus publish: append to the symbol's log and broadcast, atomically (one round trip).
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset (same {symbol} slot)
-- ARGV[1] event JSON, ARGV[2] channel, ARGV[3] event type, ARGV[4] log maxlen (approximate),
-- ARGV[5] '1' to track dispatch, ARGV[6] unused (the entry's score is its log id's server time, ms),
-- ARGV[7] key prefix (lets subscribers ignore other tenants' broadcasts on the shared channels)
-- Returns {log_id, subscribers_reached}.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'type', ARGV[3], 'event', ARGV[1])
local prev = redis.call('HMGET', KEYS[2], '_', ARGV[3])
redis.call('HSET', KEYS[2], '_', id, ARGV[3], id)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], string.match(id, '^%d+'), id)
end
local msg = '{"log_id":"' .. id .. '","prev":"' .. (prev[1] or '') .. '","prev_t":"' .. (prev[2] or '')
  .. '","bus":"' .. ARGV[7] .. '",' .. string.sub(ARGV[1], 2)
return {id, redis.call('PUBLISH', ARGV[2], msg)}
