-- tradebus state projection: apply one order/position event to its hash, atomically and once.
-- KEYS[1] entity hash, KEYS[2] idempotency window (sorted set), KEYS[3] index set (open orders / active positions)
-- ARGV[1] event_id, ARGV[2] event type, ARGV[3] timestamp, ARGV[4] 'order'|'position',
-- ARGV[5] entity id, ARGV[6] symbol, ARGV[7] event time (us since the epoch), ARGV[8] retention seconds
-- (0: forever), ARGV[9] '1' if the event may create the entity, '0' if it is older than the retention
-- window (bus/core/state.py), ARGV[10..] data field/value pairs (strings; numbers as decimals)
-- Returns 1 when applied, 0 for a duplicate, 2 when refused: too old to create an entity that does not
-- exist. Status only moves forward (rank), never back.
local WINDOW = 100  -- event ids remembered per entity (state.WINDOW): a listpack sorted set (<= 128)
local FLOOR = ''  -- window member scored with the newest event time evicted from the window
local seen = KEYS[2]
local known = redis.call('ZMSCORE', seen, ARGV[1], FLOOR)
if known[1] then return 0 end
local floor = known[2]
-- older than every event still remembered: it was applied before and evicted, or is hopelessly late
if floor and tonumber(ARGV[7]) <= tonumber(floor) then return 0 end

local SCALE = 100000000  -- amounts are summed as integer units of 1e-8 (exact below 9e7)
local function units(s)
  if not s or s == '' then return 0 end
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local ip, fp = string.match(s, '^(%d*)%.?(%d*)$')
  if not ip then return 0 end
  fp = string.sub(fp .. '00000000', 1, 8)
  local u = (tonumber(ip) or 0) * SCALE + tonumber(fp)
  if neg then return -u end
  return u
end
local function dec(u)
  local sign = ''
  if u < 0 then sign = '-'; u = -u end
  local ip = math.floor(u / SCALE)
  local fp = u - ip * SCALE
  local s = string.format('%d', ip)
  if fp > 0 then s = s .. '.' .. string.gsub(string.format('%08d', fp), '0+$', '') end
  return sign .. s
end

local h, etype, ts, kind, eid = KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local data = {}
for i = 10, #ARGV, 2 do data[ARGV[i]] = ARGV[i + 1] end
local cur = redis.call('HMGET', h, 'status', 'filled_volume', 'closed_volume', 'realized_pnl',
  'initial_volume', 'updated_at')
local status = cur[1]
if not status then status = nil end
if ARGV[9] == '0' and status == nil and redis.call('EXISTS', h) == 0 then return 2 end
local function rank(s)  -- a function, not a table: this script runs per event, tables cost more
  if s == 'pending' or s == 'active' then return 1 end
  if s == 'partially_filled' or s == 'closed' then return 2 end
  return 3  -- filled, cancelled, rejected
end

-- Plain writes are collected in `w` and sent with one HSET at the end (a call costs more than a
-- field); set-if-missing writes to an existing hash stay HSETNX calls. Nothing below reads a field
-- this step wrote.
local w = {kind .. '_id', eid, 'symbol', ARGV[6]}
local function put(k, v)
  w[#w + 1] = k
  w[#w + 1] = v
end
local function set_status(new)
  if status == nil or rank(new) > rank(status) then
    status = new
    put('status', new)
    return true
  end
  return false
end
-- the data fields an event may set (the others the projection computes)
local function settable(skip)
  local RESERVED = {status = 1, symbol = 1, created_at = 1, updated_at = 1, last_event_id = 1,
    filled_volume = 1, closed_volume = 1, realized_pnl = 1, initial_volume = 1, opened_at = 1,
    closed_at = 1, filled_at = 1, order_id = 1, position_id = 1}
  local out = {}
  for k, v in pairs(data) do
    if not RESERVED[k] and not (skip and skip[k]) then out[k] = v end
  end
  return out
end
local function fill_missing(skip, stamp)
  if not cur[1] then  -- a new entity (every step sets a status): nothing to keep, no HSETNX needed
    for k, v in pairs(settable(skip)) do put(k, v) end
    put(stamp, ts)
    return
  end
  for k, v in pairs(settable(skip)) do redis.call('HSETNX', h, k, v) end
  redis.call('HSETNX', h, stamp, ts)
end
local function overwrite(skip)
  for k, v in pairs(settable(skip)) do put(k, v) end
end

local active
if kind == 'order' then
  if etype == 'order.created' then
    fill_missing(nil, 'created_at')
    set_status('pending')
  elseif etype == 'order.partially_filled' then
    if status ~= 'filled' then put('filled_volume', dec(units(cur[2]) + units(data['fill_volume']))) end
    if data['fill_price'] then put('last_fill_price', data['fill_price']) end
    set_status('partially_filled')
  elseif etype == 'order.filled' then
    set_status('filled')
    if status == 'filled' then
      if data['volume'] then put('filled_volume', data['volume']) end
      if data['fill_price'] then put('fill_price', data['fill_price']) end
      put('filled_at', ts)
    end
  elseif etype == 'order.cancelled' then
    if set_status('cancelled') and data['reason'] then put('cancel_reason', data['reason']) end
  elseif etype == 'order.rejected' then
    if set_status('rejected') and data['reason'] then put('reject_reason', data['reason']) end
  elseif etype == 'order.modified' then
    overwrite()
    set_status('pending')
  end
  active = status == 'pending' or status == 'partially_filled'
else
  local initial, closed = cur[5], cur[3]
  if etype == 'position.opened' then
    fill_missing({volume = 1}, 'opened_at')
    if not initial and data['volume'] then
      initial = dec(units(data['volume']))
      put('initial_volume', initial)
    end
    set_status('active')
  elseif etype == 'position.partially_closed' then
    closed = dec(units(cur[3]) + units(data['closed_volume']))
    put('closed_volume', closed)
    put('realized_pnl', dec(units(cur[4]) + units(data['pnl'])))
    if data['exit_price'] then put('last_exit_price', data['exit_price']) end
    set_status('active')
  elseif etype == 'position.closed' then
    if set_status('closed') then
      put('closed_at', ts)
      if data['exit_price'] then put('exit_price', data['exit_price']) end
      if data['pnl'] then
        put('pnl', data['pnl'])
        put('realized_pnl', dec(units(cur[4]) + units(data['pnl'])))
      end
    end
  elseif etype == 'position.modified' then
    overwrite({volume = 1})
    set_status('active')
  end
  if initial then put('volume', dec(units(initial) - units(closed))) end
  active = status == 'active'
end
if not cur[6] or ts >= cur[6] then
  put('updated_at', ts)
  put('last_event_id', ARGV[1])
end
-- unpack() is bounded by Lua's C stack: an event with very many fields is written in parts
for i = 1, #w, 1000 do redis.call('HSET', h, unpack(w, i, math.min(i + 999, #w))) end
if active then
  redis.call('SADD', KEYS[3], eid)
else
  redis.call('SREM', KEYS[3], eid)
end

redis.call('ZADD', seen, ARGV[7], ARGV[1])
if redis.call('ZCARD', seen) > WINDOW + (floor and 1 or 0) then
  -- FLOOR ('' sorts first among equal scores) is rank 0 once it exists; evict the oldest event after it
  local at = floor and 1 or 0
  local oldest = redis.call('ZRANGE', seen, at, at, 'WITHSCORES')
  redis.call('ZREM', seen, oldest[1])
  redis.call('ZADD', seen, oldest[2], FLOOR)
end
if ARGV[8] ~= '0' and status and not active then
  -- terminal: counted from the last event applied, so a redelivery of any applied event finds it until then
  redis.call('EXPIRE', h, ARGV[8])
  redis.call('EXPIRE', seen, ARGV[8])
end
return 1
