-- tradebus: the log + broadcast step and the staged commands the publish scripts share (LuaScript loads
-- this file before publish.lua, publish_many.lua and publish_sequenced.lua: Lua has no include).
-- A run is one script call's events of ONE symbol: new_run(log, heads, pending, maxlen, prefix).
local function new_run(log, heads, pending, maxlen, prefix)
  return {log = log, heads = heads, pending = pending, maxlen = maxlen, bus = '","bus":"' .. prefix .. '",',
          prev = nil, prev_t = {}, n = 0}  -- prev / prev_t / n: the heads before the next event, read once per run
end
-- One event: XADD ~ to the log, heads, the pending-dispatch entry when tracked (scored with the log id's
-- server time in ms, as redispatch compares), PUBLISH with log_id / n / prev / prev_t / bus. Returns id, reached.
-- heads: '_' the symbol's last log id, one field per type its last id, '#' the entries numbered so far; n
-- numbers each entry in the symbol's log (entry field and broadcast), so a subscriber counts what a trim lost.
-- flag: '1' tracked, '' or '0' not, then the publish span's W3C traceparent when traced: the entry's 'tp'
-- field and the broadcast's 'tp' (with no tracer nothing follows the flag and nothing is added).
local function log_event(run, event, chan, t, flag)
  local tracked, tp = string.sub(flag, 1, 1) == '1', string.sub(flag, 2)
  local pt = run.prev_t[t]
  if run.prev == nil then
    local h = redis.call('HMGET', run.heads, '_', t, '#')
    run.prev, pt, run.n = h[1] or '', h[2] or '', tonumber(h[3]) or 0
  elseif pt == nil then
    pt = redis.call('HGET', run.heads, t) or ''
  end
  run.n = run.n + 1
  local n = tostring(run.n)  -- as text once (each number argument is formatted)
  local id
  if tp == '' then
    id = redis.call('XADD', run.log, 'MAXLEN', '~', run.maxlen, '*', 'type', t, 'event', event, 'n', n)
  else
    id = redis.call('XADD', run.log, 'MAXLEN', '~', run.maxlen, '*', 'type', t, 'event', event, 'n', n, 'tp', tp)
  end
  redis.call('HSET', run.heads, '_', id, t, id, '#', n)
  if tracked then
    redis.call('ZADD', run.pending, string.match(id, '^%d+'), id)
  end
  local msg = '{"log_id":"' .. id .. '","n":' .. n .. ',"prev":"' .. run.prev .. '","prev_t":"' .. pt .. run.bus
    .. (tp == '' and '' or '"tp":"' .. tp .. '",') .. string.sub(event, 2)
  local reached = redis.call('PUBLISH', chan, msg)
  run.prev, run.prev_t[t] = id, id
  return id, reached
end
-- The dispatcher's staged commands of the event logged as id, ARGV[j..last] (each: its word count, then its
-- words): task messages for a broker on this server, between SELECTs of the broker's and the bus's db (a
-- SELECT inside a script does not change the caller's db, Redis >= 7). They commit with the log entry
-- (at-least-once tasks). One that fails (a queue key of the wrong type) must not fail a publish whose event
-- is logged: the event is recorded pending instead, for beat's re-dispatch. Returns false if one failed.
local function run_staged(run, id, j, last)
  local ok = true
  while j <= last do
    local n = tonumber(ARGV[j])
    local reply = redis.pcall(unpack(ARGV, j + 1, j + n))
    if type(reply) == 'table' and reply.err then ok = false end
    j = j + n + 1
  end
  if not ok then
    redis.call('ZADD', run.pending, string.match(id, '^%d+'), id)
  end
  return ok
end
