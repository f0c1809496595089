-- tradebus publish_many: publish.lua for a run of consecutive events of ONE symbol, in one script call.
-- Each event is logged and broadcast exactly as publish.lua does it (log_event.lua), with its staged
-- commands, in order; the script is atomic, so each event's log + broadcast + task messages are too (and
-- the run as a whole). Amortises the per-EVALSHA fixed cost over the run.
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, and with log routes KEYS[4] their
-- wake-up messages, KEYS[5..] the wake flags of the routes the run wakes (same {symbol} slot)
-- ARGV[1] log maxlen (approximate), ARGV[2] key prefix, then per event: event JSON, channel, event type,
--   '' (dispatch not tracked) or anything else (tracked), the number of ARGV items that follow for its
--   staged commands, and those (log_event.lua: run_staged);
-- then, with log routes, the wake-up arguments (wake.lua).
-- Returns {log_id_1, subscribers_1, log_id_2, subscribers_2, ..., failed, woken, unsent} in the order of
-- the events; failed: the events (1-based) whose staged commands failed (they are pending re-dispatch).
local w, routes = wake_args(4)  -- functions of wake.lua; ARGV[w + 1..]: the wake-up arguments
local woken = set_flags(KEYS[1], 4, w, routes)  -- before the run's first XADD
local run = new_run(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
local out, failed, i, k = {}, {}, 3, 0
while i <= w do
  local last = i + 4 + tonumber(ARGV[i + 4])
  local id, reached = log_event(run, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  k = k + 1
  if not run_staged(run, id, i + 5, last) then failed[#failed + 1] = k end
  out[#out + 1] = id
  out[#out + 1] = reached
  i = last + 1
end
out[#out + 1] = failed
out[#out + 1] = woken
out[#out + 1] = enqueue(4, w, woken, run.prev)  -- named after the run's last id
return out
