"""The imported lists in Redis: dense, versioned, swapped atomically, freed without a stall.

The layout, the figures behind it and the reasons for each choice are in docs/data-model.md;
every key name is in dialguard.store.keys. A reader (the facts script) reads the lists
index and the buckets in one script: it sees the old version or the new one, never a mix,
never a half-built one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dialguard.store import resp, wire
from dialguard.store.buckets import INTSET_LIMIT, Buckets
from dialguard.store.errors import ListBusy, unavailable
from dialguard.store.keys import (
    HASH_KINDS,
    INDEX,
    LUA_PARTS,
    OVERFLOW,
    WHY,
    Keys,
    bucket_bitmap,
    bucket_set,
    meta_field,
)
from dialguard.store.packed import (
    ADD,
    DEFAULT_ENTRIES,
    DEFAULT_VALUE_BYTES,
    LUA_PACKED,
    MAX_ENTRIES,
    REPLACE,
    SPLIT,
    TOP_LEVEL,
    Gathered,
)

__all__ = ["LOCK_MS", "Census", "Current", "Lists"]

# An import renews its lock at every chunk; one killed stops holding it after this.
LOCK_MS = 120_000
# Live removals noted for an import under way outlive any import (but not forever: a
# killed import never collects its own).
_UNLISTED_MS = 86_400_000
# Buckets freed or measured per command: each is small, so no command holds Redis long.
_FREE_CHUNK = 500
# Lua's unpack() handles at most ~8,000 values.
_SADD_SLICE = 1000

# Write gathered buckets into one version, merging with what is there. ARGV: the base
# key, the intset limit, then per bucket: its name, a form, and data. Form B: one value,
# the whole bucket bitmap. Form S: a count n, then n offsets in ascending order, as
# integers (so Redis keeps them in an intset and appends each at its end). Returns how
# many numbers are new.
_WRITE = (
    LUA_PARTS
    + """
local base, limit = ARGV[1], tonumber(ARGV[2])
local idx, tmp = base .. INDEX, base .. SCRATCH
local added = 0
local function to_bitmap(s, b)
  for _, m in ipairs(redis.call('SMEMBERS', s)) do
    redis.call('SETBIT', b, m, 1)
  end
  redis.call('DEL', s)
end
local i = 3
while i <= #ARGV do
  local bucket, form = ARGV[i], ARGV[i + 1]
  local s, b = base .. SET .. bucket, base .. BITMAP .. bucket
  local bitmap = redis.call('EXISTS', b) == 1
  if form == 'B' then
    local data = ARGV[i + 2]
    i = i + 3
    local before = 0
    if bitmap then
      before = redis.call('BITCOUNT', b)
      redis.call('SET', tmp, data)
      redis.call('BITOP', 'OR', b, b, tmp)
      redis.call('DEL', tmp)
    else
      before = redis.call('SCARD', s)
      redis.call('SET', b, data)
      if before > 0 then to_bitmap(s, b) end
      redis.call('SADD', idx, bucket)
    end
    added = added + redis.call('BITCOUNT', b) - before
  else
    local first, last = i + 3, i + 2 + tonumber(ARGV[i + 2])
    i = last + 1
    if bitmap then
      for j = first, last do
        added = added + 1 - redis.call('SETBIT', b, ARGV[j], 1)
      end
    else
      for j = first, last, SLICE do
        added = added + redis.call('SADD', s, unpack(ARGV, j, math.min(j + SLICE - 1, last)))
      end
      redis.call('SADD', idx, bucket)
      if redis.call('SCARD', s) > limit then to_bitmap(s, b) end
    end
  end
end
return added
""".replace("SLICE", str(_SADD_SLICE))
)

# Take one number off a dnc version (its bit or member, and its reason); returns 1 if it
# was there. An emptied bitmap goes: a bucket with no number needs no key.
_UNLIST = (
    LUA_PARTS
    + """
local function unlist(base, n)
  local bucket, m = string.sub(n, 1, -5), tonumber(string.sub(n, -4))
  local removed = redis.call('SREM', base .. SET .. bucket, m)
  local b = base .. BITMAP .. bucket
  if redis.call('EXISTS', b) == 1 then  -- SETBIT would create it
    removed = removed + redis.call('SETBIT', b, m, 0)
    if redis.call('BITCOUNT', b) == 0 then redis.call('DEL', b) end
  end
  redis.call('HDEL', base .. WHY, n)
  return removed
end
"""
)

# Remove numbers from one version and from a live hash. ARGV: the version's base key ('':
# none), the live hash key ('': none), the instant (ms) from which live entries are kept,
# then the numbers. Returns {numbers that were on
# either, numbers that were in the version}.
_REMOVE = (
    _UNLIST
    + """
local base, live, before = ARGV[1], ARGV[2], tonumber(ARGV[3])
local either, listed = 0, 0
for i = 4, #ARGV do
  local here, there = 0, 0
  if base ~= '' then here = unlist(base, ARGV[i]) end
  if live ~= '' then
    -- A do-not-call taken after the file was made is not the file's to undo.
    local entry = redis.call('HGET', live, ARGV[i])
    local added = entry and tonumber(string.match(entry, '^(%d+)|'))
    if not (added and added >= before) then there = redis.call('HDEL', live, ARGV[i]) end
  end
  listed = listed + here
  if here + there > 0 then either = either + 1 end
end
return {either, listed}
"""
)

# A live removal: from the live entries and the list in force. An import of the list
# under way has numbers in its own memory still to write: the number is also noted for
# it (its unlisted set), and taken off again when it swaps its version in.
# KEYS: the live hash, the lists hash, the dnc lock, the applied changes. ARGV: the number,
# the unlisted set's lifetime, the lists hash's dnc field, the format of a dnc version's
# base and of an unlisted set's key (each completed with a version id), then the change's
# id ('': not a journalled change; one already marked applied changes nothing), its ms,
# now (the mark's score, marked in the same step) and the oldest applied mark to keep.
_DNC_REMOVE = (
    _UNLIST
    + """
local n, base, unlisted = ARGV[1], ARGV[4], ARGV[5]
if ARGV[6] ~= '' and redis.call('ZSCORE', KEYS[4], ARGV[6]) then
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[6])  -- a write a WAIT can count (Store.apply)
  return 0
end
local removed = 0
-- A removal applied late never undoes a do-not-call taken after it (the live entry
-- starts with the instant it was taken).
local entry = redis.call('HGET', KEYS[1], n)
local added = entry and tonumber(string.match(entry, '^(%d+)|'))
if not (added and ARGV[6] ~= '' and added > tonumber(ARGV[7])) then
  removed = redis.call('HDEL', KEYS[1], n)
end
local current = redis.call('HGET', KEYS[2], ARGV[3])
if current then removed = removed + unlist(string.format(base, current), n) end
local building = redis.call('GET', KEYS[3])
if building then
  unlist(string.format(base, building), n)
  redis.call('SADD', string.format(unlisted, building), n)
  redis.call('PEXPIRE', string.format(unlisted, building), ARGV[2])
end
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[9])
end
return removed
"""
)

# Put a version in force, in one atomic step: take off it the numbers removed live while
# it was built, point the lists hash at it, and forget it was a build (a crash after this
# must not have the next import free the list in force); the versions it replaces join
# the builds set until they are freed, so a crash while freeing them leaves them to the
# next import, not to no one.
# KEYS: the lists hash, the builds set, the unlisted set. ARGV: kind, pointer, metadata,
# the build's entry in the builds set, the target dnc base key ('' for other kinds), the
# kind's metadata field, then the builds-set entries of the versions dropped.
_SWAP = (
    _UNLIST
    + """
if ARGV[5] ~= '' then
  for _, n in ipairs(redis.call('SMEMBERS', KEYS[3])) do unlist(ARGV[5], n) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[6], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[4])
for i = 7, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
redis.call('DEL', KEYS[3])
return 1
"""
)

# Write gathered consents or contracts into one version (store/packed.py: the layout and
# why). ARGV: the version's base key, the most entries a bucket holds, the longest value
# kept in a bucket, the kind, how the first row of a pair treats the pair's stored
# contracts (R: replaces them; A: adds to them), then per bucket its name, how many
# entries follow, and each entry's field and value, in file order. A pair met twice keeps
# the consent given last (the same instant: the later row), or all its contracts (the
# same id: the later row). A new bucket of distinct fields within the limits is one
# HSET; any other is merged entry by entry (or, holding none of the fields and room for
# them, added to). A bucket that would grow past the limit is split, ten buckets one
# digit longer; a value past the value limit goes to the overflow hash (field
# NUMBER|PRINCIPAL_ID), the bucket holding STUB. Returns {entries written, entries new}.
_PACKED_WRITE = (
    LUA_PARTS
    + LUA_PACKED
    + """
local base, limit, vlimit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local contracts = ARGV[4] == 'contract'
local idx, over = base .. INDEX, base .. OVERFLOW
local written, new = 0, 0

local function overflow_field(level, prefix, f)
  local span = 10 ^ level
  local pid = math.floor(f / span)
  if level == 0 then return prefix .. '|' .. pid end
  return prefix .. string.format('%0' .. level .. 'd', f - pid * span) .. '|' .. pid
end

local function given(v)
  local width = (math.floor(v:byte(1) / WIDE) % 2 == 1) and 5 or 4
  local g = 0
  for i = 2, 1 + width do g = g * 256 + v:byte(i) end
  return g
end

local function items(v)
  local list, at = {}, 1
  while at <= #v do
    local id = at + ((math.floor(v:byte(at) / HAS_END) % 2 == 1) and 7 or 4)
    local size = v:byte(id)
    if size == LONG_ID then
      size = v:byte(id + 1) * 256 + v:byte(id + 2)
      id = id + 3
    else
      id = id + 1
    end
    list[#list + 1] = {v:sub(id, id + size - 1), v:sub(at, id + size - 1)}
    at = id + size
  end
  return list
end

local function added_to(old, v)
  local list = items(old)
  for _, item in ipairs(items(v)) do
    local found = false
    for k = 1, #list do
      if list[k][1] == item[1] then list[k] = item; found = true; break end
    end
    if not found then list[#list + 1] = item end
  end
  local out = {}
  for k = 1, #list do out[k] = list[k][2] end
  return table.concat(out)
end

-- What a field keeps: nil for what is stored (`old`, read through the overflow hash).
local function merged(old, op, v)
  if not old or op == 'R' then return v end
  if op == 'A' then return added_to(old, v) end
  if given(old) > given(v) then return nil end
  return v
end

-- Entries one level down, by their next digit: {digit: {fields, values[, ops]}}.
local function by_digit(level, fs, vs, ops)
  local unit = 10 ^ (level - 1)
  local span = unit * 10
  local groups = {}
  for i = 1, #fs do
    local f = tonumber(fs[i])
    local pid = math.floor(f / span)
    local off = f - pid * span
    local d = math.floor(off / unit)
    local g = groups[d]
    if not g then g = {{}, {}, {}}; groups[d] = g end
    g[1][#g[1] + 1] = string.format('%d', pid * unit + off - d * unit)
    g[2][#g[2] + 1] = vs[i]
    if ops then g[3][#g[3] + 1] = ops[i] end
  end
  return groups
end

-- Write entries into a bucket that holds none of them (new, or emptied to be split).
local function place(level, prefix, fs, vs)
  local name = level .. prefix
  local key = base .. name
  redis.call('SADD', idx, name)
  if level > 0 and #fs > limit then
    redis.call('HSET', key, SPLIT, '1')
    for d, g in pairs(by_digit(level, fs, vs)) do
      place(level - 1, prefix .. d, g[1], g[2])
    end
    return
  end
  local args = {}
  for i = 1, #fs do
    local v = vs[i]
    if #v > vlimit then
      redis.call('HSET', over, overflow_field(level, prefix, tonumber(fs[i])), v)
      v = STUB
    end
    args[#args + 1] = fs[i]
    args[#args + 1] = v
  end
  for j = 1, #args, 1000 do
    redis.call('HSET', key, unpack(args, j, math.min(j + 999, #args)))
  end
end

local function put(level, prefix, fs, ops, vs)
  local key = base .. level .. prefix
  if redis.call('EXISTS', key) == 0 then
    written = written + #fs
    new = new + #fs
    place(level, prefix, fs, vs)
    return
  end
  local olds = redis.call('HMGET', key, SPLIT, unpack(fs))
  if olds[1] then
    for d, g in pairs(by_digit(level, fs, vs, ops)) do
      put(level - 1, prefix .. d, g[1], g[3], g[2])
    end
    return
  end
  local wf, wv, fresh = {}, {}, 0
  for i = 1, #fs do
    local old = olds[i + 1]
    if old == STUB then
      old = redis.call('HGET', over, overflow_field(level, prefix, tonumber(fs[i])))
    end
    local v = merged(old, ops[i], vs[i])
    if v then
      wf[#wf + 1], wv[#wv + 1] = fs[i], v
      if not old then fresh = fresh + 1 end
      if olds[i + 1] == STUB and #v <= vlimit then
        redis.call('HDEL', over, overflow_field(level, prefix, tonumber(fs[i])))
      end
    end
  end
  written = written + #wf
  new = new + fresh
  if #wf == 0 then return end
  if level > 0 and redis.call('HLEN', key) + fresh > limit then
    local all, at, af, av = redis.call('HGETALL', key), {}, {}, {}
    for i = 1, #all, 2 do
      af[#af + 1], av[#av + 1] = all[i], all[i + 1]
      at[all[i]] = #af
    end
    for i = 1, #wf do
      local k = at[wf[i]]
      if k then av[k] = wv[i] else af[#af + 1], av[#av + 1] = wf[i], wv[i] end
    end
    redis.call('DEL', key)
    place(level, prefix, af, av)
  else
    place(level, prefix, wf, wv)
  end
end

local first = contracts and ARGV[5] or 'M'
local g = 6
while g <= #ARGV do
  local bucket, n = ARGV[g], tonumber(ARGV[g + 1])
  local fs, vs, ops, at, args = {}, {}, {}, {}, {}
  local plain = true
  for i = g + 2, g + 2 * n, 2 do
    local f, v = ARGV[i], ARGV[i + 1]
    local k = at[f]
    if not k then
      fs[#fs + 1], vs[#vs + 1], ops[#ops + 1] = f, v, first
      at[f] = #fs
      args[#args + 1] = f
      args[#args + 1] = v
      if #v > vlimit then plain = false end
    else
      plain = false
      if contracts then
        vs[k] = added_to(vs[k], v)
      elseif given(v) >= given(vs[k]) then
        vs[k] = v
      end
    end
  end
  g = g + 2 + 2 * n
  local key = base .. TOP .. bucket
  local held = plain and redis.call('HLEN', key) or -1
  local clear = held == 0
  if held > 0 and held + #fs <= limit then
    -- A bucket written before (an earlier part of the import, the list in force) that
    -- is not split and holds none of these fields: they are added as they are (what
    -- put would do, in three commands instead of six).
    local olds = redis.call('HMGET', key, SPLIT, unpack(fs))
    clear = true
    for i = 1, #fs + 1 do
      if olds[i] then clear = false; break end
    end
  end
  if clear and held + #fs <= limit then
    redis.call('HSET', key, unpack(args))
    if held == 0 then redis.call('SADD', idx, TOP .. bucket) end
    written = written + #fs
    new = new + #fs
  else
    put(TOP, bucket, fs, ops, vs)
  end
end
return {written, new}
"""
)

# The ids of principals, given the first time a list names one (ids are never reused,
# so a version keeps meaning what it meant). KEYS[1]: the ids; ARGV: names.
_PRINCIPAL_IDS = """
local ids = {}
for i = 1, #ARGV do
  local id = redis.call('HGET', KEYS[1], ARGV[i])
  if not id then
    id = redis.call('HLEN', KEYS[1])
    redis.call('HSET', KEYS[1], ARGV[i], id)
  end
  ids[i] = tonumber(id)
end
return ids
"""

# Give a lock back only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Renew a lock only if it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(slots=True)
class Census:
    """What one version holds and costs, counted now."""

    entries: int = 0
    bytes: int = 0  # MEMORY USAGE of every key of the version
    buckets: int = 0  # dense lists only
    bitmaps: int = 0  # buckets kept as bitmaps (the rest are intsets)


@dataclass(frozen=True, slots=True)
class Current:
    """What is in force for one kind: its version(s) and their metadata."""

    versions: tuple[str, ...]
    meta: Any  # dict for single-version kinds, list of dicts (newest first) for optout


class Lists:
    """Bulk writes and bookkeeping of the imported lists (the CLI's side; the service
    only reads them, in the facts script)."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._redis = client
        self.keys = keys
        self._write = client.register_script(_WRITE)
        self._remove = client.register_script(_REMOVE)
        self._dnc_remove = client.register_script(_DNC_REMOVE)
        self._principal_ids = client.register_script(_PRINCIPAL_IDS)
        self._renew = client.register_script(_RENEW)
        self._unlock = client.register_script(_UNLOCK)
        self._swap = client.register_script(_SWAP)

    # --- reading --------------------------------------------------------------------------

    async def current(self, kind: str) -> Current:
        pointer, meta = await self._call(self._redis.hmget(self.keys.index, kind, meta_field(kind)))
        versions = tuple(_text(pointer).split(",")) if pointer else ()
        if kind == "optout":
            return Current(versions, json.loads(meta) if meta else [])
        return Current(versions, json.loads(meta) if meta else {})

    async def census(self, kind: str, version: str, part: str = "") -> Census:
        """Entries and bytes of Redis memory of one version (an optout version: its
        `part`, LISTED or CLEAR), counted now: a few commands per bucket, pipelined, so it
        takes a second or two at ten million numbers."""
        if kind in HASH_KINDS:
            return await self._packed_census(self.keys.packed(kind, version))
        base = self.keys.base(kind, version, part)
        census = Census()
        buckets: list[str] = []

        async def measure() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for bucket in buckets:
                    pipe.scard(bucket_set(base, bucket))
                    pipe.bitcount(bucket_bitmap(base, bucket))
                    pipe.memory_usage(bucket_set(base, bucket))
                    pipe.memory_usage(bucket_bitmap(base, bucket))
                replies = await self._call(pipe.execute())
            for i in range(0, len(replies), 4):
                census.entries += int(replies[i]) + int(replies[i + 1])
                census.bytes += int(replies[i + 2] or 0) + int(replies[i + 3] or 0)
                census.bitmaps += replies[i + 3] is not None
            census.buckets += len(buckets)
            buckets.clear()

        try:
            async for bucket in self._redis.sscan_iter(base + INDEX, count=_FREE_CHUNK):
                buckets.append(_text(bucket))
                if len(buckets) >= _FREE_CHUNK:
                    await measure()
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from None
        await measure()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.memory_usage(base + INDEX)
            pipe.memory_usage(base + WHY)
            extra = await self._call(pipe.execute())
        census.bytes += sum(int(x or 0) for x in extra)
        return census

    async def _packed_census(self, base: str) -> Census:
        """A packed version: its entries (a split bucket holds none), the memory of its
        buckets, index and overflow hash; `bitmaps` counts the split buckets."""
        census = Census()
        buckets: list[str] = []

        async def measure() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for bucket in buckets:
                    pipe.hlen(base + bucket)
                    pipe.hget(base + bucket, SPLIT)
                    pipe.memory_usage(base + bucket, samples=0)
                replies = await self._call(pipe.execute())
            for i in range(0, len(replies), 3):
                split = replies[i + 1] is not None
                census.entries += 0 if split else int(replies[i])
                census.bitmaps += split
                census.bytes += int(replies[i + 2] or 0)
            census.buckets += len(buckets)
            buckets.clear()

        try:
            async for bucket in self._redis.sscan_iter(base + INDEX, count=_FREE_CHUNK):
                buckets.append(_text(bucket))
                if len(buckets) >= _FREE_CHUNK:
                    await measure()
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from None
        await measure()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.memory_usage(base + INDEX, samples=0)
            pipe.memory_usage(base + OVERFLOW, samples=0)
            extra = await self._call(pipe.execute())
        census.bytes += sum(int(x or 0) for x in extra)
        return census

    async def hash_census(self, key: str) -> tuple[int, int]:
        """(entries, bytes) of one hash, its memory estimated by Redis from a sample."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hlen(key)
            pipe.memory_usage(key)
            size, used = await self._call(pipe.execute())
        return int(size), int(used or 0)

    async def legacy_keys(self) -> list[str]:
        """Keys of the layouts of earlier versions, which this one does not read: the
        one hash per list (a do-not-call list left there would be silently ignored), and
        a consent or contract version in force kept as one hash (`number|principal` ->
        text) rather than packed (its consents would read as missing)."""
        names = [self.keys.legacy(kind) for kind in ("dnc", "optout", "consent", "contract")]
        for kind in HASH_KINDS:
            names += [self.keys.one_hash(kind, v) for v in (await self.current(kind)).versions]
        found = await self._call(self._redis.exists(*names))
        if not found:
            return []
        return [name for name in names if await self._call(self._redis.exists(name))]

    async def listpack_limits(self) -> tuple[int, int]:
        """(entries, value bytes) a hash keeps in the listpack encoding here, at most
        packed.MAX_ENTRIES entries: Redis's `hash-max-listpack-*` (`hash-max-ziplist-*`
        before Redis 7), its defaults (128, 64) when it refuses CONFIG."""
        entries, value = DEFAULT_ENTRIES, DEFAULT_VALUE_BYTES
        try:
            for name in ("ziplist", "listpack"):  # Redis 7 answers both: the newer wins
                reply = await self._redis.config_get(f"hash-max-{name}-*")
                entries = int(reply.get(f"hash-max-{name}-entries") or entries)
                value = int(reply.get(f"hash-max-{name}-value") or value)
        except (RedisError, OSError, ValueError):
            return DEFAULT_ENTRIES, DEFAULT_VALUE_BYTES
        return max(1, min(entries, MAX_ENTRIES)), max(0, value)

    async def principals(self) -> dict[str, int]:
        """Every principal's id given so far."""
        found = await self._call(self._redis.hgetall(self.keys.principals))
        return {_text(name): int(value) for name, value in found.items()}

    async def principal_ids(self, names: Sequence[str]) -> list[int]:
        """The ids of principals (validated names), given now to those never met."""
        if not names:
            return []
        ids = await self._call(self._principal_ids(keys=[self.keys.principals], args=names))
        return [int(i) for i in ids]

    # --- building -------------------------------------------------------------------------

    async def intset_limit(self, wanted: int = INTSET_LIMIT) -> int:
        """The most members a bucket keeps as an intset here: INTSET_LIMIT, or less when
        this Redis turns intsets into hashtables sooner (`set-max-intset-entries`; a
        Redis that refuses CONFIG is taken to have the default, 512)."""
        try:
            reply = await self._redis.config_get("set-max-intset-entries")
            configured = int(reply.get("set-max-intset-entries") or 512)
        except (RedisError, OSError, ValueError):
            return wanted
        return max(1, min(wanted, configured))

    async def acquire(self, kind: str) -> str:
        """Take the import lock of `kind` and a fresh version id for whatever it builds;
        free what a killed import of this kind left behind."""
        keys = self.keys
        version = str(await self._call(self._redis.incr(keys.seq)))
        taken = await self._call(self._redis.set(keys.lock(kind), version, nx=True, px=LOCK_MS))
        if not taken:
            raise ListBusy(
                f"another import of the {kind} list is under way; wait for it to finish"
                f" (or, if it was killed, at most {LOCK_MS // 1000} s)"
            )
        in_force = (await self.current(kind)).versions
        for entry in await self._call(self._redis.smembers(keys.building)):
            left_kind, _, left_version = _text(entry).partition(":")
            if left_kind == kind:
                if left_version not in in_force:  # never free what readers use
                    await self.free(kind, left_version)
                await self._call(self._redis.srem(keys.building, entry))
        await self._call(self._redis.sadd(keys.building, f"{kind}:{version}"))
        return version

    async def renew(self, kind: str, version: str) -> None:
        renewed = await self._call(
            self._renew(keys=[self.keys.lock(kind)], args=[version, LOCK_MS])
        )
        if not renewed:
            raise ListBusy(f"the import lock of the {kind} list was lost (Redis paused too long?)")

    async def release(self, kind: str, version: str) -> None:
        """Forget the build of `version` (swapped in or freed) and give the lock back."""
        await self._call(self._redis.srem(self.keys.building, f"{kind}:{version}"))
        await self._call(self._unlock(keys=[self.keys.lock(kind)], args=[version]))

    async def write(self, base: str, buckets: Buckets, limit: int = INTSET_LIMIT) -> int:
        """Write gathered buckets into a version; how many numbers were new there.

        The commands go as built (see Buckets.writes), two in flight on one connection:
        Redis runs one while the next is prepared here."""
        sha = await self._call(self._redis.script_load(_WRITE))
        head = (base.encode(), str(limit).encode())
        commands = (
            resp.evalsha(_text(sha), head, count, arguments)
            for count, arguments in buckets.writes(limit)
        )
        replies = await self._call(wire.pipelined(self._redis, commands, in_flight=2))
        return sum(int(reply) for reply in replies)

    async def remove(
        self, base: str, live_key: str, keys: Sequence[str], keep_from_ms: int
    ) -> tuple[int, int]:
        """Remove numbers from a version (`base`, or '') and a live hash (or '', and only
        entries taken before `keep_from_ms`): how many were on either, how many were in
        the version."""
        if not keys:
            return 0, 0
        args: list[str | int] = [base, live_key, keep_from_ms, *keys]
        either, listed = await self._call(self._remove(args=args))
        return int(either), int(listed)

    async def set_reasons(self, base: str, reasons: Mapping[str, str]) -> None:
        if reasons:
            await self._call(self._redis.hset(base + WHY, mapping=cast(Any, reasons)))

    async def write_packed(
        self,
        base: str,
        gathered: Gathered,
        limits: tuple[int, int],
        replacing: bool,
        in_flight: int = 2,
        merging: bool = True,
    ) -> tuple[int, int]:
        """Write gathered consents or contracts into a version: (entries written, entries
        new there). `replacing`: the first contract row of a pair met replaces the pair's
        stored contracts (a merge into the list in force), rather than adding to them (a
        build, written in parts). Two writes in flight, as `write`, or `in_flight`. `merging`:
        the version may hold some of the buckets already; if not (the first write of a
        build), the buckets a plain HSET can write are written so (Gathered.hsets)."""
        written = new = 0
        rest: list[int] | None = None  # the parts left to the write script (None: all)
        if not merging:
            plain = gathered.plain(min(limits[0], MAX_ENTRIES))
            written, new, again = await self._hsets(base, gathered, plain)
            taken = set(plain).difference(again)
            rest = [part for part in range(gathered.buckets) if part not in taken]
        sha = await self._call(self._redis.script_load(_PACKED_WRITE))
        head = (
            base.encode(),
            str(limits[0]).encode(),
            str(limits[1]).encode(),
            gathered.kind.encode(),
            REPLACE if replacing else ADD,
        )
        commands = (
            resp.evalsha(_text(sha), head, count, arguments)
            for count, arguments in gathered.writes(merging, rest)
        )
        replies = await self._call(wire.pipelined(self._redis, commands, in_flight))
        written += sum(int(r[0]) for r in replies)
        new += sum(int(r[1]) for r in replies)
        return written, new

    async def _hsets(
        self, base: str, gathered: Gathered, parts: list[int]
    ) -> tuple[int, int, list[int]]:
        """Write parts into buckets not yet in the version, one plain HSET each: (entries
        written, entries new, the parts to write again through the write script). A part
        whose HSET added fewer fields than it holds met a pair twice, and HSET kept the
        later row, which for consents is not always the one to keep (the consent given
        last is): its bucket is deleted here, and written again by the caller."""
        prefix = (base + str(TOP_LEVEL)).encode()
        index = (base + INDEX).encode()
        batches = (
            (batch, commands + resp.command(b"SADD", index, *gathered.names(batch)), len(batch) + 1)
            for batch, commands in gathered.hsets(prefix, parts)
        )
        replies = await self._call(wire.pipelined_batches(self._redis, batches))
        written = new = 0
        again: list[int] = []
        for batch, batch_replies in replies:
            for part, added in zip(batch, batch_replies, strict=False):
                count = gathered.count(part)
                if int(added) == count:
                    written += count
                    new += count
                else:
                    again.append(part)
        if again:
            keys = [prefix + name for name in gathered.names(again, top=False)]
            for start in range(0, len(keys), _FREE_CHUNK):
                await self._call(self._redis.unlink(*keys[start : start + _FREE_CHUNK]))
        return written, new, again

    async def remove_dnc(
        self,
        number_key: str,
        change: tuple[str, int, int, int] = ("", 0, 0, 0),
        client: aioredis.Redis | None = None,
    ) -> bool:
        """A live removal: from the live entries, the list in force and the one being
        built by an import under way (or the import would bring the number back).
        `change`: (id, ms, now, oldest mark kept) of the journal record it applies;
        `client`: the connection to send it on (Store.apply then WAITs on it)."""
        keys = self.keys
        args: list[str | int] = [
            number_key,
            _UNLISTED_MS,
            "dnc",
            keys.base_format("dnc"),
            keys.unlisted_format,
            *change,
        ]
        script_keys = [keys.dnc_live, keys.index, keys.lock("dnc"), keys.applied]
        removed = await self._call(self._dnc_remove(keys=script_keys, args=args, client=client))
        return bool(removed)

    async def swap(
        self,
        kind: str,
        versions: Sequence[str],
        meta: Any,
        lock_version: str,
        target: str,
        dropping: Sequence[str] = (),
    ) -> None:
        """Put `versions` in force: one script, so readers see the old or the new, whole.
        `lock_version` names the import's lock; `target` the dnc version written to;
        `dropping` the versions no longer in force, to free next (see `forget`)."""
        keys = [self.keys.index, self.keys.building, self.keys.unlisted(lock_version)]
        args = [
            kind,
            ",".join(versions),
            json.dumps(meta, separators=(",", ":")),
            f"{kind}:{lock_version}",
            self.keys.base("dnc", target) if kind == "dnc" and target else "",
            meta_field(kind),
            *(f"{kind}:{version}" for version in dropping),
        ]
        await self._call(self._swap(keys=keys, args=args))

    async def forget(self, kind: str, version: str) -> None:
        """A dropped version is freed: no later import needs to."""
        await self._call(self._redis.srem(self.keys.building, f"{kind}:{version}"))

    async def free(self, kind: str, version: str) -> None:
        """Delete one version a few hundred small keys at a time (UNLINK: a big hash is
        freed by a background thread), so Redis never stalls on it."""
        if kind in HASH_KINDS:
            # And the one hash an earlier version kept it in (docs/data-model.md).
            await self._call(self._redis.unlink(self.keys.one_hash(kind, version)))
            base = self.keys.packed(kind, version)
            await self._free_buckets(base, _packed_keys)
            await self._call(self._redis.unlink(base + INDEX, base + OVERFLOW))
            return
        for base in self.keys.bases(kind, version):
            await self._free_buckets(base, _dense_keys)
            await self._call(self._redis.unlink(base + INDEX, base + WHY))

    async def _free_buckets(
        self, base: str, keys_of: Callable[[str, str], tuple[str, ...]]
    ) -> None:
        index = base + INDEX
        while True:
            # A bucket leaves the index only once its keys are gone: stopped half-way, a
            # later free finds what is left.
            buckets = await self._call(self._redis.srandmember(index, _FREE_CHUNK))
            if not buckets:
                break
            names = [_text(b) for b in buckets]
            await self._call(
                self._redis.unlink(*(k for name in names for k in keys_of(base, name)))
            )
            await self._call(self._redis.srem(index, *names))

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _packed_keys(base: str, bucket: str) -> tuple[str, ...]:
    return (base + bucket,)


def _dense_keys(base: str, bucket: str) -> tuple[str, ...]:
    return (bucket_set(base, bucket), bucket_bitmap(base, bucket))
