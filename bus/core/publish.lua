-- tradebus publish: log and broadcast, atomically (one round trip), with the event's task messages when the
-- broker is a database of this server (log_event.lua: run_staged) and its log routes' wake-ups (wake.lua).
-- KEYS[1] log stream, KEYS[2] heads hash, KEYS[3] pending-dispatch zset, and with log routes KEYS[4] their
-- wake-up messages (hash), KEYS[5..] the wake flags of the routes this event wakes (all in the {symbol} slot)
-- ARGV[1] event JSON, ARGV[2] channel, ARGV[3] event type, ARGV[4] log maxlen (approximate),
-- ARGV[5] '1' to track dispatch ('0' not), then the traceparent when traced (log_event.lua), ARGV[6] the number of ARGV items after ARGV[7] that are staged commands,
-- ARGV[7] key prefix (lets subscribers ignore other tenants' broadcasts on the shared channels),
-- ARGV[8..7 + ARGV[6]] the staged commands, then with log routes: the wake-up arguments (wake.lua)
-- Returns {log_id, subscribers_reached, failed, woken, unsent}: failed {1} when a staged command failed (the
-- event is then pending re-dispatch), woken the log routes (1-based) whose flag was set now, unsent those
-- whose wake-up the caller must send (its message was not in the hash).
local w, routes = wake_args(4)  -- functions of wake.lua
local woken = set_flags(KEYS[1], 4, w, routes)  -- before the XADD: a new group's '$' is just before this event
local run = new_run(KEYS[1], KEYS[2], KEYS[3], ARGV[4], ARGV[7])  -- functions of log_event.lua
local id, reached = log_event(run, ARGV[1], ARGV[2], ARGV[3], ARGV[5])
local failed = {}
if not run_staged(run, id, 8, 7 + tonumber(ARGV[6])) then failed[1] = 1 end
return {id, reached, failed, woken, enqueue(4, w, woken, id)}
