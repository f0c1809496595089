-- tradebus state projection: apply one order/position event to its hash, atomically and once.
-- KEYS[1] entity hash, KEYS[2] idempotency window (sorted set), KEYS[3] index set (open orders / active positions)
-- ARGV[1] event_id, ARGV[2] event type, ARGV[3] timestamp, ARGV[4] 'order'|'position',
-- ARGV[5] entity id, ARGV[6] symbol, ARGV[7] event time (us since the epoch), ARGV[8] retention seconds
-- (0: forever), ARGV[9] event ids remembered per entity, ARGV[10] '1' if the event may create the
-- entity, '0' if it is older than the retention window (bus/core/state.py),
-- ARGV[11..] data field/value pairs (strings; numbers as decimals)
-- Returns 1 when applied, 0 for a duplicate, 2 when refused: too old to create an entity that does not
-- exist. Status only moves forward (rank), never back.
local WINDOW = tonumber(ARGV[9])
local FLOOR = ''    -- member scored with the newest event time evicted from the window
local seen, score = KEYS[2], tonumber(ARGV[7])
if redis.call('ZSCORE', seen, ARGV[1]) then return 0 end
local floor = redis.call('ZSCORE', seen, FLOOR)
-- older than every event still remembered: it was applied before and evicted, or is hopelessly late
if floor and score <= tonumber(floor) then return 0 end

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
for i = 11, #ARGV, 2 do data[ARGV[i]] = ARGV[i + 1] end
local RESERVED = {status = 1, symbol = 1, created_at = 1, updated_at = 1, last_event_id = 1,
  filled_volume = 1, closed_volume = 1, realized_pnl = 1, initial_volume = 1, opened_at = 1,
  closed_at = 1, filled_at = 1, order_id = 1, position_id = 1}
local cur = redis.call('HMGET', h, 'status', 'filled_volume', 'closed_volume', 'realized_pnl',
  'initial_volume', 'updated_at')
local status = cur[1]
if not status then status = nil end
if ARGV[10] == '0' and status == nil and redis.call('EXISTS', h) == 0 then return 2 end
local RANK = {pending = 1, partially_filled = 2, filled = 3, cancelled = 3, rejected = 3,
  active = 1, closed = 2}

local function set_status(new)
  if status == nil or RANK[new] > RANK[status] then
    status = new
    redis.call('HSET', h, 'status', new)
    return true
  end
  return false
end
local function fill_missing(skip)
  for k, v in pairs(data) do
    if not RESERVED[k] and not (skip and skip[k]) then redis.call('HSETNX', h, k, v) end
  end
end
local function overwrite(skip)
  for k, v in pairs(data) do
    if not RESERVED[k] and not (skip and skip[k]) then redis.call('HSET', h, k, v) end
  end
end

redis.call('HSET', h, kind .. '_id', eid, 'symbol', ARGV[6])
if kind == 'order' then
  if etype == 'order.created' then
    fill_missing()
    redis.call('HSETNX', h, 'created_at', ts)
    set_status('pending')
  elseif etype == 'order.partially_filled' then
    if status ~= 'filled' then
      redis.call('HSET', h, 'filled_volume', dec(units(cur[2]) + units(data['fill_volume'])))
    end
    if data['fill_price'] then redis.call('HSET', h, 'last_fill_price', data['fill_price']) end
    set_status('partially_filled')
  elseif etype == 'order.filled' then
    set_status('filled')
    if status == 'filled' then
      if data['volume'] then redis.call('HSET', h, 'filled_volume', data['volume']) end
      if data['fill_price'] then redis.call('HSET', h, 'fill_price', data['fill_price']) end
      redis.call('HSET', h, 'filled_at', ts)
    end
  elseif etype == 'order.cancelled' then
    if set_status('cancelled') and data['reason'] then redis.call('HSET', h, 'cancel_reason', data['reason']) end
  elseif etype == 'order.rejected' then
    if set_status('rejected') and data['reason'] then redis.call('HSET', h, 'reject_reason', data['reason']) end
  elseif etype == 'order.modified' then
    overwrite()
    set_status('pending')
  end
  if status == 'pending' or status == 'partially_filled' then
    redis.call('SADD', KEYS[3], eid)
  else
    redis.call('SREM', KEYS[3], eid)
  end
else
  local initial = cur[5]
  if etype == 'position.opened' then
    fill_missing({volume = 1})
    if not initial and data['volume'] then
      initial = dec(units(data['volume']))
      redis.call('HSET', h, 'initial_volume', initial)
    end
    redis.call('HSETNX', h, 'opened_at', ts)
    set_status('active')
  elseif etype == 'position.partially_closed' then
    redis.call('HSET', h, 'closed_volume', dec(units(cur[3]) + units(data['closed_volume'])))
    redis.call('HSET', h, 'realized_pnl', dec(units(cur[4]) + units(data['pnl'])))
    if data['exit_price'] then redis.call('HSET', h, 'last_exit_price', data['exit_price']) end
    set_status('active')
  elseif etype == 'position.closed' then
    if set_status('closed') then
      redis.call('HSET', h, 'closed_at', ts)
      if data['exit_price'] then redis.call('HSET', h, 'exit_price', data['exit_price']) end
      if data['pnl'] then
        redis.call('HSET', h, 'pnl', data['pnl'])
        redis.call('HSET', h, 'realized_pnl', dec(units(cur[4]) + units(data['pnl'])))
      end
    end
  elseif etype == 'position.modified' then
    overwrite({volume = 1})
    set_status('active')
  end
  if initial then
    local closed = redis.call('HGET', h, 'closed_volume')
    redis.call('HSET', h, 'volume', dec(units(initial) - units(closed)))
  end
  if status == 'active' then
    redis.call('SADD', KEYS[3], eid)
  else
    redis.call('SREM', KEYS[3], eid)
  end
end

if not cur[6] or ts >= cur[6] then
  redis.call('HSET', h, 'updated_at', ts, 'last_event_id', ARGV[1])
end
redis.call('ZADD', seen, ARGV[7], ARGV[1])
if redis.call('ZCARD', seen) > WINDOW + (floor and 1 or 0) then
  -- FLOOR ('' sorts first among equal scores) is rank 0 once it exists; evict the oldest event after it
  local rank = floor and 1 or 0
  local oldest = redis.call('ZRANGE', seen, rank, rank, 'WITHSCORES')
  redis.call('ZREM', seen, oldest[1])
  redis.call('ZADD', seen, oldest[2], FLOOR)
end
local TERMINAL = {filled = 1, cancelled = 1, rejected = 1, closed = 1}
local retention = tonumber(ARGV[8])
if retention > 0 and TERMINAL[status] then
  -- counted from the last event applied, so a redelivery of any applied event finds it until then
  redis.call('EXPIRE', h, retention)
  redis.call('EXPIRE', seen, retention)
end
return 1
