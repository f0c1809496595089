-- tradebus log-route read (drain.py beside it): the only way a drainer reads, fenced by its lease.
-- KEYS[1] log stream, KEYS[2] drain lease, KEYS[3] wake flag (same {symbol} slot)
-- ARGV[1] group (the route's name), ARGV[2] consumer, ARGV[3] lease token, ARGV[4] batch size
-- Replies (first element: the kind):
--   {'lost'}  the lease is not this drainer's (expired, taken over): it stops and writes nothing
--   {'pending', deliveries, entries}  the oldest entry the group handed out and nobody acknowledged,
--       alone, with how often it was handed out (a drainer died on it or its effect failed): one at a
--       time, so a poison entry is counted alone; an entry trimmed meanwhile comes back with nil fields
--   {'gap', last_delivered, first_id, lost, entries_read}  `lost` entries were trimmed from the log
--       before the group read them: the caller dead-letters the range and moves the group past it
--   {'new', entries}  up to ARGV[4] entries never handed out, in log order
--   {'done'}  nothing pending, nothing new: the lease is released and the wake flag deleted in this same
--       atomic step, so any publish came either before it (its entry was read above) or after it (it
--       finds no flag and sends its own wake-up)
local log, lease, flag, group, consumer = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
if redis.call('GET', lease) ~= ARGV[3] then return {'lost'} end

local function read(id, count)
  return redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', log, id)
end
local head = read('0', 1)
if type(head) == 'table' and head.err then
  -- NOGROUP: the log key was deleted since the group was made (a group vanishes with its key), so
  -- everything in the log now is new to the route
  if redis.pcall('XGROUP', 'CREATE', log, group, '0', 'MKSTREAM', 'ENTRIESREAD', 0).err then
    redis.call('XGROUP', 'CREATE', log, group, '0', 'MKSTREAM')  -- Redis 6.2
  end
  head = read('0', 1)
end
if #head[1][2] > 0 then
  local p = redis.call('XPENDING', log, group, '-', '+', 1, consumer)
  return {'pending', p[1][4], head[1][2]}
end

local function older(a, b)  -- stream id a < b
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', log)) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == group and info['lag'] and info['lag'] > 0 then
    -- trimming removes the oldest entries: if the first one left is past what the group read, every entry
    -- added after that point but no longer in the log was trimmed unread (lag counts them, XLEN does not)
    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
    if first and older(info['last-delivered-id'], first[1]) then
      local len = redis.call('XLEN', log)
      local lost = info['lag'] - len
      if lost > 0 then
        return {'gap', info['last-delivered-id'], first[1], lost, info['entries-read'] + info['lag'] - len}
      end
    end
  end
end

local new = read('>', ARGV[4])
if new and #new[1][2] > 0 then return {'new', new[1][2]} end
redis.call('DEL', lease, flag)
return {'done'}
