"""The imported lists in Redis: dense, versioned, swapped atomically, freed without a stall.

The layout, the figures behind it and the reasons for each choice are in docs/data-model.md;
every key name is in dialguard.store.keys. A reader (the facts script) reads the lists
index and the buckets in one script: it sees the old version or the new one, never a mix,
never a half-built one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    WHY,
    Keys,
    bucket_bitmap,
    bucket_set,
    meta_field,
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

# Keep the consent given last for each pair, whatever order rows arrive in (a file's own
# rows, or a merge over what is stored). KEYS[1]: the consent hash; ARGV: (pair, value)
# pairs, each value starting with its given-at milliseconds. Returns how many were kept.
_CONSENT_MERGE = """
local kept = 0
for i = 1, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  local given = tonumber(string.match(ARGV[i + 1], '^(-?%d+)|'))
  if not old or tonumber(string.match(old, '^(-?%d+)|')) <= given then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    kept = kept + 1
  end
end
return kept
"""

# Contracts: a file holds the whole set of contracts of each pair it names, so the first
# row of a pair in an import replaces what is stored for it, and its other rows add to
# it (a contract id met twice: the later row). KEYS: the contract hash, the import's set
# of pairs met so far. ARGV: (pair, JSON item) pairs. Returns the contracts written.
_CONTRACT_MERGE = """
for i = 1, #ARGV, 2 do
  local item = cjson.decode(ARGV[i + 1])
  local items = {}
  if redis.call('SADD', KEYS[2], ARGV[i]) == 0 then
    items = cjson.decode(redis.call('HGET', KEYS[1], ARGV[i]))
  end
  local found = false
  for k = 1, #items do
    if items[k][1] == item[1] then items[k] = item; found = true end
  end
  if not found then items[#items + 1] = item end
  redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(items))
end
redis.call('PEXPIRE', KEYS[2], 86400000)
return #ARGV / 2
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
        self._consent_merge = client.register_script(_CONSENT_MERGE)
        self._contract_merge = client.register_script(_CONTRACT_MERGE)
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
        takes a second or two at ten million numbers. Hashes: exact entries, memory
        estimated by Redis from a sample."""
        if kind in HASH_KINDS:
            entries, used = await self.hash_census(self.keys.hash(kind, version))
            return Census(entries, used)
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

    async def hash_census(self, key: str) -> tuple[int, int]:
        """(entries, bytes) of one hash, its memory estimated by Redis from a sample."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hlen(key)
            pipe.memory_usage(key)
            size, used = await self._call(pipe.execute())
        return int(size), int(used or 0)

    async def legacy_keys(self) -> list[str]:
        """Keys of the one-hash-per-list layout of earlier versions, which this one does
        not read: a do-not-call list left there would be silently ignored."""
        names = [self.keys.legacy(kind) for kind in ("dnc", "optout", "consent", "contract")]
        found = await self._call(self._redis.exists(*names))
        if not found:
            return []
        return [name for name in names if await self._call(self._redis.exists(name))]

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
        await self._call(self._redis.unlink(self.keys.seen(version)))
        await self._call(self._unlock(keys=[self.keys.lock(kind)], args=[version]))

    async def hash_size(self, kind: str, version: str) -> int:
        return int(await self._call(self._redis.hlen(self.keys.hash(kind, version))))

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

    async def merge_consents(self, key: str, fields: Sequence[tuple[str, str]]) -> int:
        if not fields:
            return 0
        args = [value for pair in fields for value in pair]
        return int(await self._call(self._consent_merge(keys=[key], args=args)))

    async def merge_contracts(
        self, key: str, lock_version: str, fields: Sequence[tuple[str, str]]
    ) -> int:
        if not fields:
            return 0
        args = [value for pair in fields for value in pair]
        keys = [key, self.keys.seen(lock_version)]
        return int(await self._call(self._contract_merge(keys=keys, args=args)))

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
            await self._call(self._redis.unlink(self.keys.hash(kind, version)))
            return
        for base in self.keys.bases(kind, version):
            index = base + INDEX
            while True:
                # A bucket leaves the index only once its keys are gone: stopped half-way,
                # a later free finds what is left.
                buckets = await self._call(self._redis.srandmember(index, _FREE_CHUNK))
                if not buckets:
                    break
                names = [_text(b) for b in buckets]
                await self._call(
                    self._redis.unlink(
                        *(bucket_set(base, b) for b in names),
                        *(bucket_bitmap(base, b) for b in names),
                    )
                )
                await self._call(self._redis.srem(index, *names))
            await self._call(self._redis.unlink(index, base + WHY))

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
