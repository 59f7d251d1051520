"""A WriteBatch as one Lua call: the ops travel as one msgpack blob that a small script
replays with ``redis.call``.

Why: a batch of 5,000 events is a few hundred thousand sorted-set updates. As separate
commands in a MULTI, redis-py spends ~15 µs of Python per command packing it and parsing its
reply; as separate arguments of one call it still packs each one in Python. One msgpack blob
is encoded in C (msgspec) and decoded in C (Redis's cmsgpack), and the whole batch is still
applied atomically, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from features.batch import (
    Delete,
    Expire,
    HSet,
    HSetNX,
    SetBytes,
    WriteBatch,
    ZAdd,
    ZIncrBy,
    ZKeepTop,
    ZRem,
    ZRemBelow,
    ZScale,
    ZScalePrefix,
)

#: Prefix of the error the script returns when a guard fails (and nothing was written).
CONFLICT = "CONFLICT"

#: The interpreter. ARGV[1] holds two msgpack arrays (decoded by Redis's built-in cmsgpack):
#: the guards ``[key index, field, expected or nil]``, checked before anything is written,
#: then the ops ``[code, key index (1-based, into KEYS), payload]`` (a ZADD's payload
#: is score-member pairs, as the command takes them). cmsgpack has no binary
#: type, so byte values ride as further ARGV entries and a SET's payload is their index.
_PRELUDE = """
-- One command per chunk of arguments rather than per member: each redis.call costs about
-- as much as the update it carries. Chunks stay far inside Lua's C stack (8,000 slots for
-- unpack) and are even, so score-member and field-value pairs never straddle two calls.
local CHUNK = 4000
local function variadic(command, key, flag, payload)
  for j = 1, #payload, CHUNK do
    local last = math.min(j + CHUNK - 1, #payload)
    if flag then
      redis.call(command, key, flag, unpack(payload, j, last))
    else
      redis.call(command, key, unpack(payload, j, last))
    end
  end
end
"""

#: The interpreter as a Lua function of (KEYS, ARGV): the scripts below embed it.
_INTERPRET = (
    "local function interpret(KEYS, ARGV)\n"
    + """local guards, ops = cmsgpack.unpack(ARGV[1])
for _, guard in ipairs(guards) do
  local current = redis.call('HGET', KEYS[guard[1]], guard[2])
  if current == false then current = nil end
  if current ~= guard[3] then
    return redis.error_reply('CONFLICT ' .. KEYS[guard[1]] .. '.' .. guard[2] .. ' changed')
  end
end
for _, op in ipairs(ops) do
  local code, key, payload = op[1], KEYS[op[2]], op[3]
  if code == 'I' then
    for j = 1, #payload, 2 do
      redis.call('ZINCRBY', key, payload[j + 1], payload[j])
    end
  elseif code == 'A' then
    variadic('ZADD', key, nil, payload)
  elseif code == 'G' then
    variadic('ZADD', key, 'GT', payload)
  elseif code == 'R' then
    variadic('ZREM', key, nil, payload)
  elseif code == 'B' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. payload)
  elseif code == 'K' then
    redis.call('ZREMRANGEBYRANK', key, 0, -(payload + 1))
  elseif code == 'S' then
    redis.call('ZUNIONSTORE', key, 1, key, 'WEIGHTS', payload)
  elseif code == 'P' then
    -- payload: {SCAN MATCH pattern, factor}. The keys are found here, inside the script, so
    -- a key another worker created a moment ago is rescaled too.
    local cursor = '0'
    repeat
      local reply = redis.call('SCAN', cursor, 'MATCH', payload[1], 'COUNT', 1000)
      cursor = reply[1]
      for _, found in ipairs(reply[2]) do
        if redis.call('TYPE', found).ok == 'zset' then
          redis.call('ZUNIONSTORE', found, 1, found, 'WEIGHTS', payload[2])
        end
      end
    until cursor == '0'
  elseif code == 'H' then
    variadic('HSET', key, nil, payload)
  elseif code == 'N' then
    for j = 1, #payload, 2 do
      redis.call('HSETNX', key, payload[j], payload[j + 1])
    end
  elseif code == 'V' then
    if payload[2] then
      redis.call('SET', key, ARGV[payload[1]], 'EX', payload[2])
    else
      redis.call('SET', key, ARGV[payload[1]])
    end
  elseif code == 'E' then
    redis.call('EXPIRE', key, payload)
  elseif code == 'D' then
    redis.call('DEL', key)
  else
    return redis.error_reply('unknown op ' .. tostring(code))
  end
end
return 0
"""
    + "end\n"
)

APPLY_OPS_LUA = _PRELUDE + _INTERPRET + "return interpret(KEYS, ARGV)\n"

#: Prefix of the error a sharded decide returns while a batch it must not overlap is pending.
BUSY = "BUSY"

#: Step 2 of a sharded commit, in the home slot. KEYS: the pending-batches hash, then the
#: home writes' keys; ARGV: the batch id, its pending record (``R…`` when it moves a
#: landmark), then the home writes (as :data:`APPLY_OPS_LUA` takes them). The guards are
#: checked and the home writes applied as in one Redis, and the batch is recorded as pending:
#: from here on it is decided, and its shards' shares are applied whatever happens.
#: A landmark move rescales every shard, so it overlaps no other pending batch.
DECIDE_LUA = (
    _PRELUDE
    + _INTERPRET
    + """
local pending, id, record = KEYS[1], ARGV[1], ARGV[2]
local others = redis.call('HGETALL', pending)
for j = 1, #others, 2 do
  local moves = string.sub(record, 1, 1) == 'R' or string.sub(others[j + 1], 1, 1) == 'R'
  if others[j] ~= id and moves then
    return redis.error_reply('BUSY batch ' .. others[j] .. ' is pending')
  end
end
local keys, argv = {}, {}
for i = 2, #KEYS do keys[i - 1] = KEYS[i] end
for i = 3, #ARGV do argv[i - 2] = ARGV[i] end
local result = interpret(keys, argv)
if type(result) == 'table' and result.err then return result end
redis.call('HSET', pending, id, record)
return 0
"""
)

#: Step 3, in each shard's slot. KEYS: the shard's prepared share of the batch (a list: its
#: keys as msgpack, then its writes as :data:`APPLY_OPS_LUA` takes them), the shard's copy of
#: the checkpoint, then the share's keys; ARGV[1]: the batch's checkpoint as msgpack
#: ``[field, offset, …]``. A shard whose copy already reaches the checkpoint holds the batch
#: and skips it; otherwise the share is applied with the copy, and the share is dropped.
APPLY_PREPARED_LUA = (
    _PRELUDE
    + _INTERPRET
    + """
local prepared, copy = KEYS[1], KEYS[2]
local marks = cmsgpack.unpack(ARGV[1])
local held = #marks > 0
for j = 1, #marks, 2 do
  local current = redis.call('HGET', copy, marks[j])
  if (not current) or tonumber(current) < tonumber(marks[j + 1]) then held = false end
end
if held then
  redis.call('DEL', prepared)
  return 'HELD'
end
local share = redis.call('LRANGE', prepared, 1, -1)
if #share == 0 then
  -- Without a checkpoint, only applying drops a share.
  if #marks == 0 then return 'HELD' end
  return redis.error_reply('MISSING ' .. prepared .. ': the share of a decided batch is gone')
end
local keys = {}
for i = 3, #KEYS do keys[i - 2] = KEYS[i] end
local result = interpret(keys, share)
if type(result) == 'table' and result.err then return result end
for j = 1, #marks, 2 do redis.call('HSET', copy, marks[j], marks[j + 1]) end
redis.call('DEL', prepared)
return 'APPLIED'
"""
)


HGET_MANY_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGET', key, ARGV[1])
end
return out
"""

ZSCORES_MANY_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZMSCORE', key, unpack(ARGV))
end
return out
"""

VALUES_AND_TOPS_LUA = """
local out = {}
local n = tonumber(ARGV[1])
local k = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  if i <= n then
    out[i] = redis.call('GET', key)
  else
    out[i] = redis.call('ZREVRANGE', key, 0, k - 1, 'WITHSCORES')
  end
end
return out
"""

TOP_MANY_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZREVRANGE', key, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
end
return out
"""


def encode_ops(
    batch: WriteBatch, stored: Callable[[str], str] | None = None
) -> tuple[list[str], list[bytes]]:
    """KEYS and ARGV for :data:`APPLY_OPS_LUA`: guards and ops as msgpack, then byte values.
    ``stored`` names each key as it is stored (a sharded namespace's layout).

    Scores travel as msgpack doubles, and Redis turns a Lua number back into the shortest
    string that reads as the same double, so Redis applies exactly the numbers the in-memory
    store applies.

    Examples:
        >>> import msgspec
        >>> from features.batch import WriteBatch
        >>> b = WriteBatch()
        >>> b.zincrby("k", "a", 1.5); b.expire("k", 60)
        >>> b.set_bytes("v", b"\\x00")
        >>> b.guard("g", "f", None)
        >>> keys, argv = encode_ops(b)
        >>> keys, argv[1:]
        (['g', 'k', 'v'], [b'\\x00'])
        >>> guards = msgspec.msgpack.encode([[1, "f", None]])
        >>> argv[0].startswith(guards)
        True
    """
    keys: list[str] = []
    index: dict[str, int] = {}
    out: list[list[Any]] = []
    binaries: list[bytes] = []

    def key_of(key: str) -> int:
        slot = index.get(key)
        if slot is None:
            keys.append(key if stored is None else stored(key))
            slot = index[key] = len(keys)
        return slot

    guards = [[key_of(key), field, expected] for (key, field), expected in batch.guards.items()]
    for op in batch:
        match op:
            case ZIncrBy(key, amounts):
                out.append(["I", key_of(key), [x for pair in amounts.items() for x in pair]])
            case ZAdd(key, scores, greater):
                flat = [x for m, s in scores.items() for x in (float(s), m)]
                out.append(["G" if greater else "A", key_of(key), flat])
            case ZRem(key, members):
                out.append(["R", key_of(key), list(members)])
            case ZRemBelow(key, score):
                # As a string: Lua would print a large integer in exponent form.
                out.append(["B", key_of(key), str(int(score))])
            case ZKeepTop(key, keep):
                out.append(["K", key_of(key), keep])
            case ZScale(key, factor):
                out.append(["S", key_of(key), factor])
            case ZScalePrefix(prefix, factor):
                # No key index: the script finds the keys itself (the first key stands in).
                out.append(["P", key_of(prefix), [glob_escape(prefix) + "*", factor]])
            case HSet(key, fields) | HSetNX(key, fields):
                flat = [x for pair in fields.items() for x in pair]
                out.append(["H" if isinstance(op, HSet) else "N", key_of(key), flat])
            case SetBytes(key, value, ttl_s):
                binaries.append(value)
                out.append(["V", key_of(key), [len(binaries) + 1, ttl_s]])
            case Expire(key, seconds):
                out.append(["E", key_of(key), seconds])
            case Delete(key):
                out.append(["D", key_of(key), None])
            case _:
                raise TypeError(f"unknown store op {op!r}")
    # Two msgpack objects back to back: cmsgpack.unpack returns them as two values.
    return keys, [_MSGPACK.encode(guards) + _MSGPACK.encode(out), *binaries]


_MSGPACK = msgspec.msgpack.Encoder()


def glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters (key prefixes contain braces and may contain []?*)."""
    return "".join("\\" + c if c in "[]?*\\" else c for c in text)
