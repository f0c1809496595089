-- tradebus publish_sequenced: publish_many.lua for events numbered by their source (an executor's
-- outbox), each logged at most once: an event whose number is not above the source's mark for the
-- symbol was logged before (a resend after a crash or a lost reply) and is skipped, tasks included.
-- A new event is logged and broadcast exactly as publish_many.lua does it (keep the two in step),
-- its staged commands run (task messages for a broker on this server) and the mark moves, atomically.
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, KEYS[4] the source's mark
-- (a string 'origin|seq|log_id'), and with log routes KEYS[5] their wake-up messages, KEYS[6..] their
-- wake flags (all in the same {symbol} slot)
-- ARGV[1] log maxlen (approximate), ARGV[2] key prefix, ARGV[3] origin (the numbering's identity: the
-- numbers of another origin are never compared, that event is logged), then per event: its number,
-- event JSON, channel, event type, '' or '1' (track dispatch: ZADD the pending entry), its publish span's
-- W3C traceparent or '' (tracing off: nothing added to the entry or the broadcast), and the count
-- of the ARGV items that follow for its staged commands (each: its length, then its words); then, with
-- log routes, the wake-up arguments (wake.lua).
-- Returns {log_id, subscribers, logged_now} per event: logged_now 0 for a skipped event, whose
-- log_id is the mark's when its number is the mark's, else ''; then the log routes woken and those
-- whose wake-up the caller must send (wake.lua), when at least one event was logged now.
local log, heads, pending, mark_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, bus, origin = ARGV[1], '","bus":"' .. ARGV[2] .. '",', ARGV[3]
local mark_origin, mark_seq, mark_id = string.match(redis.call('GET', mark_key) or '', '^([^|]*)|(%d+)|(.*)$')
if mark_origin ~= origin then mark_seq, mark_id = nil, '' end
mark_seq = tonumber(mark_seq)
local mark_text, prev, prev_t, out, i = nil, nil, {}, {}, 4  -- mark_text: the new mark, if it moved
local w, routes = wake_args(5)  -- functions of wake.lua; ARGV[w + 1..]: the wake-up arguments
local woken = set_flags(log, 5, w, routes)  -- before the first XADD
while i <= w do
  local seq, event, chan, t, tracked = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local tp, staged_end = ARGV[i + 5], i + 6 + tonumber(ARGV[i + 6])
  if mark_seq ~= nil and seq <= mark_seq then
    out[#out + 1] = seq == mark_seq and mark_id or ''
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local id
    if tp == '' then
      id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', 'type', t, 'event', event)
    else
      id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', 'type', t, 'event', event, 'tp', tp)
    end
    local pt = prev_t[t]
    if prev == nil then
      local h = redis.call('HMGET', heads, '_', t)
      prev, pt = h[1] or '', h[2] or ''
    elseif pt == nil then
      pt = redis.call('HGET', heads, t) or ''
    end
    redis.call('HSET', heads, '_', id, t, id)
    if tracked ~= '' then
      redis.call('ZADD', pending, string.match(id, '^%d+'), id)
    end
    local msg = '{"log_id":"' .. id .. '","prev":"' .. prev .. '","prev_t":"' .. pt .. bus
      .. (tp == '' and '' or '"tp":"' .. tp .. '",') .. string.sub(event, 2)
    out[#out + 1] = id
    out[#out + 1] = redis.call('PUBLISH', chan, msg)
    out[#out + 1] = 1
    prev, prev_t[t] = id, id
    local j = i + 7
    while j <= staged_end do  -- the dispatcher's staged commands (they restore the selected db)
      local n = tonumber(ARGV[j])
      redis.call(unpack(ARGV, j + 1, j + n))
      j = j + n + 1
    end
    mark_seq, mark_id, mark_text = seq, id, ARGV[i] .. '|' .. id  -- the number as sent (no float format)
  end
  i = staged_end + 1
end
if mark_text ~= nil then
  redis.call('SET', mark_key, origin .. '|' .. mark_text)
  out[#out + 1] = woken
  out[#out + 1] = enqueue(5, w, woken, prev)  -- named after the last event logged now
else  -- nothing logged: no wake-up owed (and none sent), so no flag of ours may stay set
  for _, r in ipairs(woken) do redis.call('DEL', KEYS[5 + r]) end
  out[#out + 1], out[#out + 1] = {}, {}
end
return out
