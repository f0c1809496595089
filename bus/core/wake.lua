-- tradebus wake-ups of log routes: the functions the publish scripts share (LuaScript loads this file
-- before each of them). With log routes a publish script gets KEYS[m] the symbol's wake-message hash and
-- KEYS[m+1..] one wake flag per log route, and ARGV[w+1..]: flag TTL ms, broker db ('' when the caller
-- sends the wake-ups: a separate broker), bus db, then 4 per route: group, queue key, message field,
-- message ('' once stored in the hash: the field names it). See bus/dispatch/logroutes/wake.py.
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
local function wake_args(m)  -- where the wake-up arguments start in ARGV (w), and the number of routes
  local routes = #KEYS - m
  if routes <= 0 then return #ARGV, 0 end
  return #ARGV - 3 - 4 * routes, routes
end
local function set_flags(log, m, w, routes)  -- SET NX each route's flag: the routes whose flag was set now
  local woken, new = {}, {}
  for r = 1, routes do
    if ARGV[w + 4 * r + 3] ~= '' then redis.call('HSET', KEYS[m], ARGV[w + 4 * r + 2], ARGV[w + 4 * r + 3]) end
    if redis.call('SET', KEYS[m + r], '1', 'NX', 'PX', ARGV[w + 1]) then
      woken[#woken + 1], new[#new + 1] = r, ARGV[w + 4 * r]
    end
  end
  if #new > 0 then ensure_groups(log, new) end
  return woken
end
local function enqueue(m, w, woken, id)  -- same-server broker: LPUSH the wake-ups, named after id
  local msgs, unsent = {}, {}  -- unsent: its message is missing from the hash (the caller sends it)
  if #woken == 0 or ARGV[w + 2] == '' then return unsent end
  for _, r in ipairs(woken) do
    local msg = redis.call('HGET', KEYS[m], ARGV[w + 4 * r + 2])
    if msg then msgs[#msgs + 1] = {ARGV[w + 4 * r + 1], (string.gsub(msg, '@@ID@@', id))} else unsent[#unsent + 1] = r end
  end
  redis.call('SELECT', ARGV[w + 2])
  for _, msg in ipairs(msgs) do redis.call('LPUSH', msg[1], msg[2]) end
  redis.call('SELECT', ARGV[w + 3])
  return unsent
end
