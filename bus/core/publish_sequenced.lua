-- tradebus publish_sequenced: publish_many.lua for events numbered by their source (an executor's
-- outbox), each logged at most once: an event whose number is not above the source's mark for the
-- symbol was logged before (a resend after a crash or a lost reply) and is skipped, tasks included.
-- A new event is logged and broadcast as publish_many.lua does it (log_event.lua), its staged commands
-- run (task messages for a broker on this server) and the mark moves, atomically.
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, KEYS[4] the source's mark
-- (a string 'origin|seq|log_id'), and with log routes KEYS[5] their wake-up messages, KEYS[6..] their
-- wake flags (all in the same {symbol} slot)
-- ARGV[1] log maxlen (approximate), ARGV[2] key prefix, ARGV[3] origin (the numbering's identity: the
-- numbers of another origin are never compared, that event is logged), then per event: its number,
-- event JSON, channel, event type, '' or '1' (track dispatch: ZADD the pending entry; then the traceparent
-- when traced, log_event.lua), and the count
-- of the ARGV items that follow for its staged commands (log_event.lua: run_staged); then, with
-- log routes, the wake-up arguments (wake.lua).
-- Returns {log_id, subscribers, logged_now} per event: logged_now 0 for a skipped event, whose
-- log_id is the mark's when its number is the mark's, else ''; then the events (1-based) whose staged
-- commands failed (pending re-dispatch), the log routes woken and those whose wake-up the caller must
-- send (wake.lua), when at least one event was logged now.
local mark_key, origin = KEYS[4], ARGV[3]
local mark_raw = redis.call('GET', mark_key)
local mark_origin, mark_seq, mark_id = string.match(mark_raw or '', '^([^|]*)|(%d+)|(.*)$')
if mark_origin ~= origin then mark_seq, mark_id = nil, '' end
mark_seq = tonumber(mark_seq)
local mark_text, out, failed, i, k = nil, {}, {}, 4, 0  -- mark_text: the new mark, if it moved
local skipped = false
local w, routes = wake_args(5)  -- functions of wake.lua; ARGV[w + 1..]: the wake-up arguments
local woken = set_flags(KEYS[1], 5, w, routes)  -- before the first XADD
local run = new_run(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])  -- functions of log_event.lua
while i <= w do
  local seq, staged_end = tonumber(ARGV[i]), i + 5 + tonumber(ARGV[i + 5])
  k = k + 1
  if mark_seq ~= nil and seq <= mark_seq then
    out[#out + 1] = seq == mark_seq and mark_id or ''
    out[#out + 1] = 0
    out[#out + 1] = 0
    skipped = true
  else
    local id, reached = log_event(run, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
    out[#out + 1] = id
    out[#out + 1] = reached
    out[#out + 1] = 1
    if not run_staged(run, id, i + 6, staged_end) then failed[#failed + 1] = k end
    mark_seq, mark_id, mark_text = seq, id, ARGV[i] .. '|' .. id  -- the number as sent (no float format)
  end
  i = staged_end + 1
end
if mark_text ~= nil then
  redis.call('SET', mark_key, origin .. '|' .. mark_text)
  out[#out + 1] = failed
  out[#out + 1] = woken
  out[#out + 1] = enqueue(5, w, woken, run.prev)  -- named after the last event logged now
else  -- nothing logged: no wake-up owed (and none sent), so no flag of ours may stay set
  -- A resend found logged rewrites the mark unchanged: WAIT (replicated publish) is documented to cover
  -- the connection's own writes, and a connection that wrote nothing (a restarted executor's) could be
  -- confirmed at once though the first write is on no replica (Redis 7.0 happens to wait anyway); the
  -- rewrite follows the first write in the replication stream, so a replica that has it has both.
  if skipped then redis.call('SET', mark_key, mark_raw) end
  for _, r in ipairs(woken) do redis.call('DEL', KEYS[5 + r]) end
  out[#out + 1] = {}
  out[#out + 1] = {}
  out[#out + 1] = {}
end
return out
