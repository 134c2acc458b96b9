"""The Lua scripts of the memory data plane (memory.store runs them): each one round trip, atomic
in the agent's hash-tag slot."""

from __future__ import annotations

from aiinfra.memory.resp import Script

# The agent's usage hash: each counted name's stored bytes, their count `~n` and sum `~b` (`~` is
# outside the name alphabet), and `~c`, where the last reclaim of expired names stopped. A name
# counts from its write until its delete, or until a list or a reclaim finds it expired.
USAGE = """
-- Longer than a listpack entry may be: a hash or sorted set holding it becomes a hash table or a
-- skiplist and stays one, so adding many names is no linear search (as INDEX_ENCODING_MEMBER).
local LONG = string.rep('~', 65)
local function forget(usage, name)
  local size = redis.call('HGET', usage, name)
  if size then
    redis.call('HDEL', usage, name)
    redis.call('HINCRBY', usage, '~n', -1)
    redis.call('HINCRBY', usage, '~b', -tonumber(size))
  end
end
-- The agent's count and bytes once `names` of `sizes` are written, each replacing what it held.
local function usage_after(usage, names, sizes)
  local held = redis.call('HMGET', usage, '~n', '~b', unpack(names))
  local n, b = tonumber(held[1] or 0), tonumber(held[2] or 0)
  for i = 1, #names do
    if not held[i + 2] then n = n + 1 end
    b = b + sizes[i] - tonumber(held[i + 2] or 0)
  end
  return n, b
end
-- Forgets the expired names among the next `budget` of the index, from where the last one stopped.
local function reclaim(index, usage, base, budget)
  local from = redis.call('HGET', usage, '~c') or ''
  local lo = '-'
  if from ~= '' then lo = '(' .. from end
  local names = redis.call('ZRANGE', index, lo, '+', 'BYLEX', 'LIMIT', 0, budget)
  for _, name in ipairs(names) do
    if redis.call('EXISTS', base .. name) == 0 then
      redis.call('ZREM', index, name)
      forget(usage, name)
    end
  end
  local stop = ''
  if #names == budget then stop = names[#names] end
  redis.call('HSET', usage, '~c', stop)
end
-- Counts `names` of `sizes` if they fit the quotas (after reclaiming expired names once if they do
-- not): 0, else -1 (over the count) or -2 (over the bytes), and then nothing is counted.
local function count(index, usage, base, names, sizes, max_n, max_b, budget, ttl_ms)
  for attempt = 1, 2 do
    local n, b = usage_after(usage, names, sizes)
    local over = 0
    if max_n > 0 and n > max_n then over = -1 elseif max_b > 0 and b > max_b then over = -2 end
    if over == 0 then
      local fields = {'~n', n, '~b', b, '~e', LONG}
      for i = 1, #names do
        fields[#fields + 1] = names[i]
        fields[#fields + 1] = sizes[i]
      end
      redis.call('HSET', usage, unpack(fields))
      redis.call('PEXPIRE', usage, ttl_ms)
      return 0
    end
    if attempt == 2 then return over end
    reclaim(index, usage, base, budget)
  end
end
"""

# Whether a write's precondition refuses it, given what its key holds (`cur`, false for nothing): mode
# `absent` (If-None-Match: *), `exists` (If-Match: *) or `match` of `version` (bytes 1..9).
CONDITION = """
local function refused(cur, mode, version)
  return (mode == 'absent' and cur) or (mode == 'exists' and not cur)
    or (mode == 'match' and (not cur or string.sub(cur, 2, 9) ~= version))
end
"""

# A put: KEYS = key, index (and usage, with quotas). 0 when its precondition does not hold, -1 / -2
# over the count / bytes quota (0 for none), else 2 when created, 1 when replaced.
PUT = Script(
    USAGE
    + CONDITION
    + """
local cur = redis.call('GET', KEYS[1])
if refused(cur, ARGV[3], ARGV[4]) then return 0 end
local max_n, max_b, budget = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[10])
if max_n > 0 or max_b > 0 then
  local over = count(KEYS[2], KEYS[3], ARGV[9], {ARGV[5]}, {#ARGV[1]}, max_n, max_b, budget, ARGV[6])
  if over ~= 0 then return over end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if cur then return 1 end
return 2
"""
)

# A batch put under quotas: KEYS = index, usage, then each memory's key; ARGV = max count, max
# bytes, index TTL, memory prefix, reclaim budget, then (sealed value, PXAT, name) per memory.
# -1 / -2 over a quota (nothing written), else how many it wrote.
BATCH_PUT = Script(
    USAGE
    + """
local names, sizes, members = {}, {}, {}
for i = 3, #KEYS do
  local at = 3 * (i - 3) + 6
  names[#names + 1] = ARGV[at + 2]
  sizes[#sizes + 1] = #ARGV[at]
  members[#members + 1] = 0
  members[#members + 1] = ARGV[at + 2]
end
local max_n, max_b, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local over = count(KEYS[1], KEYS[2], ARGV[4], names, sizes, max_n, max_b, budget, ARGV[3])
if over ~= 0 then return over end
for i = 3, #KEYS do
  local at = 3 * (i - 3) + 6
  redis.call('SET', KEYS[i], ARGV[at], 'PXAT', ARGV[at + 1])
end
redis.call('ZADD', KEYS[1], 0, LONG, unpack(members))
redis.call('ZREM', KEYS[1], LONG)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return #KEYS - 2
"""
)

# Recall entries (see memory.recall) whose memory is gone or holds another version than theirs:
# deleted, expired, or replaced by a write without a text. `held` is the version the memory holds
# now, as `GETRANGE <key> 1 8` reads it without copying its value ('' when there is none).
RECALL = """
local function stale(vectors, name, held)
  local sealed = redis.call('HGET', vectors, name)
  return sealed and string.sub(sealed, 2, 9) ~= held
end
local function drop(vectors, texts, name)
  redis.call('HDEL', vectors, name)
  redis.call('HDEL', texts, name)
end
"""

# A delete: KEYS = key, index, recall vectors, recall texts (and usage, with quotas). -1 when there is
# no memory, 0 when If-Match names another version, else 1.
DELETE = Script(
    USAGE
    + RECALL
    + """
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if ARGV[1] == 'match' and string.sub(cur, 2, 9) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
drop(KEYS[3], KEYS[4], ARGV[3])
if KEYS[5] then forget(KEYS[5], ARGV[3]) end
return 1
"""
)

# Pages the index by name after the cursor, forgetting names whose entry has expired. Examines at
# most `budget` names, live or expired, so one call's work is bounded however many names expired:
# answers {next cursor or '', live names...}, stopping after `limit` live names plus a look at one
# more (which only says whether another page exists), or where the budget ran out.
LIST = Script(
    USAGE
    + """
local prefix, after, limit, base = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local budget = tonumber(ARGV[5])
local lo = '[' .. prefix
if after ~= '' and after >= prefix then lo = '(' .. after end
local hi = '+'
if prefix ~= '' then hi = '[' .. prefix .. '\\255' end
local live, examined, last = {}, 0, nil
while examined < budget do
  local page = math.min(limit + 1, budget - examined)
  local names = redis.call('ZRANGE', KEYS[1], lo, hi, 'BYLEX', 'LIMIT', 0, page)
  if #names == 0 then return {'', unpack(live)} end
  for _, name in ipairs(names) do
    examined = examined + 1
    if redis.call('EXISTS', base .. name) == 1 then
      if #live == limit then return {live[limit], unpack(live)} end
      live[#live + 1] = name
    else
      redis.call('ZREM', KEYS[1], name)
      if KEYS[2] then forget(KEYS[2], name) end
    end
    last = name
  end
  lo = '(' .. last
end
return {last, unpack(live)}
"""
)

# Replaces each blob only if it is still the one that was read: a concurrent write wins.
SWAP = Script(
    """
local swapped = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2 * i - 1] then
    redis.call('SET', KEYS[i], ARGV[2 * i], 'KEEPTTL')
    swapped = swapped + 1
  end
end
return swapped
"""
)

# A write of memories with recall texts (a put with one, or a batch put where any item has one):
# KEYS = index, recall vectors, recall texts, each memory's key, then usage with quotas. ARGV =
# the first memory's precondition (mode, version; 'any' for a batch), max count, max bytes, index
# TTL, memory prefix, reclaim budget, max recall texts, then per memory: sealed value, PXAT, name,
# sealed vector, sealed text (both '' for one without a text: its old ones are dropped). 0 when the
# precondition does not hold, -1 / -2 over the count / bytes quota, -3 over the recall texts, and
# then nothing is written; else 2 when the first memory was created, 1 when it was replaced.
RECALL_PUT = Script(
    USAGE
    + CONDITION
    + RECALL
    + """
local HEAD, EACH = 8, 5
local n = (#ARGV - HEAD) / EACH
local usage = KEYS[4 + n]
local cur = redis.call('GET', KEYS[4])
if refused(cur, ARGV[1], ARGV[2]) then return 0 end
local names, sizes, members = {}, {}, {0, LONG}
for i = 1, n do
  local at = HEAD + EACH * (i - 1)
  names[i] = ARGV[at + 3]
  sizes[i] = #ARGV[at + 1] + #ARGV[at + 4] + #ARGV[at + 5]
  members[#members + 1] = 0
  members[#members + 1] = names[i]
end
local function added()
  local count = 0
  for i = 1, n do
    local at = HEAD + EACH * (i - 1)
    if ARGV[at + 4] ~= '' and redis.call('HEXISTS', KEYS[2], names[i]) == 0 then count = count + 1 end
  end
  return count
end
local max_r = tonumber(ARGV[8])
if max_r > 0 and redis.call('HLEN', KEYS[2]) + added() > max_r then
  local held = redis.call('HKEYS', KEYS[2])
  for _, name in ipairs(held) do
    local held = redis.call('GETRANGE', ARGV[6] .. name, 1, 8)
    if stale(KEYS[2], name, held) then drop(KEYS[2], KEYS[3], name) end
  end
  if redis.call('HLEN', KEYS[2]) + added() > max_r then return -3 end
end
if usage then
  local max_n, max_b, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[7])
  local over = count(KEYS[1], usage, ARGV[6], names, sizes, max_n, max_b, budget, ARGV[5])
  if over ~= 0 then return over end
end
for i = 1, n do
  local at = HEAD + EACH * (i - 1)
  redis.call('SET', KEYS[3 + i], ARGV[at + 1], 'PXAT', ARGV[at + 2])
  if ARGV[at + 4] == '' then
    drop(KEYS[2], KEYS[3], names[i])
  else
    redis.call('HSET', KEYS[2], names[i], ARGV[at + 4])
    redis.call('HSET', KEYS[3], names[i], ARGV[at + 5])
  end
end
redis.call('ZADD', KEYS[1], unpack(members))
redis.call('ZREM', KEYS[1], LONG)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
if cur then return 1 end
return 2
"""
)

# A recall's best candidates: KEYS = recall vectors, recall texts, then each candidate's memory key;
# ARGV = '1' to answer values, then each candidate's name and version (8 bytes). Per candidate:
# its sealed value ('' without values) and sealed text, or false, false where its memory no longer
# holds that version; stale entries are dropped on the way.
RECALL_FETCH = Script(
    RECALL
    + """
local out = {}
for i = 3, #KEYS do
  local name, version = ARGV[2 * i - 4], ARGV[2 * i - 3]
  local held = redis.call('GETRANGE', KEYS[i], 1, 8)
  if held == version then
    local value = ''
    if ARGV[1] == '1' then value = redis.call('GET', KEYS[i]) end
    out[#out + 1] = value
    out[#out + 1] = redis.call('HGET', KEYS[2], name)
  else
    if stale(KEYS[1], name, held) then drop(KEYS[1], KEYS[2], name) end
    out[#out + 1] = false
    out[#out + 1] = false
  end
end
return out
"""
)
