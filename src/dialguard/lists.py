"""The imported lists in Redis: dense, versioned, swapped atomically, freed without a stall.

The layout, the figures behind it and the reasons for each choice are in docs/data-model.md.
In short (``P`` is the configured key prefix, ``V`` a version id that is never reused):

- ``P lists`` hash: the version in force of each list and its metadata. ``dnc`` -> ``V``;
  ``optout`` -> ``V,V,...`` (registry result sets, newest check first); ``consent`` and
  ``contract`` -> ``V``; ``KIND:meta`` -> JSON (when, from which file, how many).
- ``P dnc:V:s:BUCKET`` / ``P dnc:V:b:BUCKET``: the numbers of one version, bucketed by
  every digit but the last four. A bucket is an intset of those last four digits (2 bytes
  each) until it holds more than INTSET_LIMIT numbers, then a 10,000-bit bitmap (1,250
  bytes, whatever it holds). ``P dnc:V:idx`` lists the buckets, so a version is
  measured and freed without scanning the keyspace; ``P dnc:V:why`` keeps the reasons a
  file gave (only those: most rows give none).
- ``P optout:V:L:...`` / ``P optout:V:C:...``: a registry result set, listed and checked
  clear numbers, in the same bucket form.
- ``P consent:V``, ``P contract:V``: hashes keyed ``number|principal``.
- ``P lists:seq`` allocates versions; ``P lists:lock:KIND`` is held by the import of KIND
  under way (its value is the version it builds, so a live removal reaches it too);
  ``P lists:building`` remembers builds not yet swapped in, so a killed import's leftovers
  are freed by the next import of that kind; ``P lists:unlisted:LOCK`` holds the numbers
  removed live while an import ran (taken off its version when it is swapped in), and
  ``P lists:seen:LOCK`` the pairs a contract import has met.

A reader (the facts script) reads ``P lists`` and the buckets in one script: it sees the
old version or the new one, never a mix, never a half-built one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "HASH_KINDS",
    "INTSET_LIMIT",
    "ListBusy",
    "Lists",
    "StoreUnavailable",
]

# A bucket holds the numbers sharing every digit but the last BUCKET_DIGITS.
BUCKET_DIGITS = 4
# An intset of n members costs 2n + 8 bytes, a bucket bitmap 1,250: past ~620 members the
# bitmap is smaller. Redis turns an intset of more than `set-max-intset-entries` (512 by
# default) into a hashtable of ~50 bytes per member, so buckets convert before that.
INTSET_LIMIT = 500

HASH_KINDS = ("consent", "contract")

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
_WRITE = """
local base, limit = ARGV[1], tonumber(ARGV[2])
local idx, tmp = base .. 'idx', base .. 'tmp'
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
  local s, b = base .. 's:' .. bucket, base .. 'b:' .. bucket
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

# Take one number off a dnc version (its bit or member, and its reason); returns 1 if it
# was there. An emptied bitmap goes: a bucket with no number needs no key.
_UNLIST = """
local function unlist(base, n)
  local bucket, m = string.sub(n, 1, -5), tonumber(string.sub(n, -4))
  local removed = redis.call('SREM', base .. 's:' .. bucket, m)
  local b = base .. 'b:' .. bucket
  if redis.call('EXISTS', b) == 1 then  -- SETBIT would create it
    removed = removed + redis.call('SETBIT', b, m, 0)
    if redis.call('BITCOUNT', b) == 0 then redis.call('DEL', b) end
  end
  redis.call('HDEL', base .. 'why', n)
  return removed
end
"""

# Remove numbers from one version and from a live hash. ARGV: the version's base key ('':
# none), the live hash key ('': none), then the numbers. Returns {numbers that were on
# either, numbers that were in the version}.
_REMOVE = (
    _UNLIST
    + """
local base, live = ARGV[1], ARGV[2]
local either, listed = 0, 0
for i = 3, #ARGV do
  local here, there = 0, 0
  if base ~= '' then here = unlist(base, ARGV[i]) end
  if live ~= '' then there = redis.call('HDEL', live, ARGV[i]) end
  listed = listed + here
  if here + there > 0 then either = either + 1 end
end
return {either, listed}
"""
)

# A live removal: from the live entries and the list in force. An import of the list
# under way has numbers in its own memory still to write: the number is also noted for
# it (`P lists:unlisted:LOCK`), and taken off again when it swaps its version in.
# KEYS: the live hash, the lists hash, the dnc lock. ARGV: the key prefix, the number.
_DNC_REMOVE = (
    _UNLIST
    + """
local prefix, n = ARGV[1], ARGV[2]
local removed = redis.call('HDEL', KEYS[1], n)
local current = redis.call('HGET', KEYS[2], 'dnc')
if current then removed = removed + unlist(prefix .. 'dnc:' .. current .. ':', n) end
local building = redis.call('GET', KEYS[3])
if building then
  unlist(prefix .. 'dnc:' .. building .. ':', n)
  redis.call('SADD', prefix .. 'lists:unlisted:' .. building, n)
  redis.call('PEXPIRE', prefix .. 'lists:unlisted:' .. building, ARGV[3])
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
# the build's entry in the builds set, the target dnc base key ('' for other kinds), then
# the builds-set entries of the versions dropped.
_SWAP = (
    _UNLIST
    + """
if ARGV[5] ~= '' then
  for _, n in ipairs(redis.call('SMEMBERS', KEYS[3])) do unlist(ARGV[5], n) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':meta', ARGV[3])
redis.call('SREM', KEYS[2], ARGV[4])
for i = 6, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
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


class ListBusy(Exception):
    """Another import of the same list is under way (one line)."""


class StoreUnavailable(Exception):
    """Redis could not be reached or answered with an error; one line."""


_BUCKET_SPAN = 10**BUCKET_DIGITS
BUCKET_BYTES = _BUCKET_SPAN // 8
_EMPTY_BUCKET = bytes(BUCKET_BYTES)
# Buckets gathered before they are written out: 1.25 KB each, so at most ~80 MB whatever
# the file's size. The French mobile range is 20,000 buckets, so a list of mobiles, or a
# registry result set (listed and clear: 40,000), goes out once, at the end. Writing
# earlier costs more: each write then touches many buckets for a few numbers each.
MAX_GATHERED = 65_536
# Work per write, in numbers added to intsets (~0.1 µs each in Redis): a write holds
# Redis about a millisecond, so lookups keep going between writes. A bucket costs
# _BUCKET_WEIGHT more (four commands), a bitmap _BITMAP_WEIGHT (a SET, two BITCOUNTs).
_WRITE_WEIGHT = 5_000
_BUCKET_WEIGHT = 20
_BITMAP_WEIGHT = 40


class Buckets:
    """Numbers gathered per bucket as bitmaps (in Redis's bit order), then written in the
    fewest commands: a dense bucket whole, a sparse one as its offsets.

    One flat bytearray, a slot per bucket: at ten million numbers the gathering is bound
    by memory accesses, and this layout and integer bucket ids measured 25 % faster than a
    dict of one bytearray per bucket name."""

    def __init__(self) -> None:
        self._slots: dict[int, int] = {}  # bucket (the key without its last digits) -> bit
        self._bits = bytearray()
        self.repeated = 0  # numbers met twice

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, keys: Iterable[str]) -> None:
        slots, bits = self._slots, self._bits
        get = slots.get
        repeated = 0
        for key in keys:
            bucket, offset = divmod(int(key), _BUCKET_SPAN)
            start = get(bucket)
            if start is None:
                start = slots[bucket] = len(bits) * 8
                bits.extend(_EMPTY_BUCKET)
            position = start + offset
            byte, bit = position >> 3, 0x80 >> (position & 7)  # SETBIT 0 is the high bit
            if bits[byte] & bit:
                repeated += 1
            else:
                bits[byte] |= bit
        self.repeated += repeated

    def writes(self, limit: int) -> Iterator[tuple[int, bytes]]:
        """The write script's arguments after the base key and limit, ~_WRITE_WEIGHT per
        write, already in Redis's wire format: (how many, the bytes). Encoding ten million
        offsets one by one through redis-py cost more than parsing the file; here each is
        a table lookup. Empties self."""
        parts: list[bytes] = []
        count = weight = 0
        bits = self._bits
        for bucket, start in self._slots.items():
            bitmap = bits[start >> 3 : (start >> 3) + BUCKET_BYTES]
            value = int.from_bytes(bitmap, "big")
            name = _bulk(str(bucket).encode())
            if value.bit_count() > limit:
                parts += (name, _FORM_BITMAP, _bulk(bytes(bitmap)))
                count += 3
                weight += _BITMAP_WEIGHT
            else:
                # The bits as text, high bit first: character i is offset i.
                text = format(value, f"0{_BUCKET_SPAN}b")
                offsets: list[bytes] = []
                at = text.find("1")
                while at >= 0:
                    offsets.append(_OFFSETS[at])
                    at = text.find("1", at + 1)
                parts += (name, _FORM_SET, _bulk(str(len(offsets)).encode()), *offsets)
                count += 3 + len(offsets)
                weight += len(offsets) + _BUCKET_WEIGHT
            if weight >= _WRITE_WEIGHT:
                yield count, b"".join(parts)
                parts, count, weight = [], 0, 0
        if parts:
            yield count, b"".join(parts)
        self._slots, self._bits = {}, bytearray()


def _bulk(value: bytes) -> bytes:
    """One argument in Redis's wire format (RESP bulk string)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


_OFFSETS = [_bulk(str(offset).encode()) for offset in range(_BUCKET_SPAN)]
_FORM_BITMAP = _bulk(b"B")
_FORM_SET = _bulk(b"S")


@dataclass(frozen=True, slots=True)
class Current:
    """What is in force for one kind: its version(s) and their metadata."""

    versions: tuple[str, ...]
    meta: Any  # dict for single-version kinds, list of dicts (newest first) for optout


class Lists:
    """Bulk writes and bookkeeping of the imported lists (the CLI's side; the service
    only reads them, in the facts script)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self.index = prefix + "lists"
        self._write = client.register_script(_WRITE)
        self._remove = client.register_script(_REMOVE)
        self._dnc_remove = client.register_script(_DNC_REMOVE)
        self._consent_merge = client.register_script(_CONSENT_MERGE)
        self._contract_merge = client.register_script(_CONTRACT_MERGE)
        self._renew = client.register_script(_RENEW)
        self._unlock = client.register_script(_UNLOCK)
        self._swap = client.register_script(_SWAP)

    # --- names ----------------------------------------------------------------------------

    def base(self, kind: str, version: str, part: str = "") -> str:
        """The key prefix of one version of a dense list (``part``: L or C for optout)."""
        return f"{self._prefix}{kind}:{version}:" + (f"{part}:" if part else "")

    def hash_key(self, kind: str, version: str) -> str:
        return f"{self._prefix}{kind}:{version}"

    def lock_key(self, kind: str) -> str:
        return f"{self._prefix}lists:lock:{kind}"

    # --- reading --------------------------------------------------------------------------

    async def current(self, kind: str) -> Current:
        pointer, meta = await self._call(self._redis.hmget(self.index, kind, f"{kind}:meta"))
        versions = tuple(_text(pointer).split(",")) if pointer else ()
        if kind == "optout":
            return Current(versions, json.loads(meta) if meta else [])
        return Current(versions, json.loads(meta) if meta else {})

    def bases(self, kind: str, version: str) -> list[str]:
        if kind == "optout":
            return [self.base(kind, version, "L"), self.base(kind, version, "C")]
        if kind == "dnc":
            return [self.base(kind, version)]
        return []

    async def census(self, kind: str, version: str, part: str = "") -> tuple[int, int]:
        """(entries, bytes of Redis memory) of one version, counted now: a few commands
        per bucket, pipelined, so it takes a second or two at ten million numbers.
        Hashes: exact entries, memory estimated by Redis from a sample."""
        if kind in HASH_KINDS:
            key = self.hash_key(kind, version)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hlen(key)
                pipe.memory_usage(key)
                size, used = await self._call(pipe.execute())
            return int(size), int(used or 0)
        base = self.base(kind, version, part)
        entries = used = 0
        buckets: list[str] = []

        async def measure() -> None:
            nonlocal entries, used
            async with self._redis.pipeline(transaction=False) as pipe:
                for bucket in buckets:
                    pipe.scard(f"{base}s:{bucket}")
                    pipe.bitcount(f"{base}b:{bucket}")
                    pipe.memory_usage(f"{base}s:{bucket}")
                    pipe.memory_usage(f"{base}b:{bucket}")
                replies = await self._call(pipe.execute())
            for i in range(0, len(replies), 4):
                entries += int(replies[i]) + int(replies[i + 1])
                used += int(replies[i + 2] or 0) + int(replies[i + 3] or 0)
            buckets.clear()

        async for bucket in self._redis.sscan_iter(base + "idx", count=_FREE_CHUNK):
            buckets.append(_text(bucket))
            if len(buckets) >= _FREE_CHUNK:
                await measure()
        await measure()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.memory_usage(base + "idx")
            pipe.memory_usage(base + "why")
            extra = await self._call(pipe.execute())
        return entries, used + sum(int(x or 0) for x in extra)

    async def legacy_keys(self) -> list[str]:
        """Keys of the one-hash-per-list layout of earlier versions, which this one does
        not read: a do-not-call list left there would be silently ignored."""
        names = [self._prefix + kind for kind in ("dnc", "optout", "consent", "contract")]
        found = await self._call(self._redis.exists(*names)) if names else 0
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
        version = str(await self._call(self._redis.incr(self._prefix + "lists:seq")))
        taken = await self._call(self._redis.set(self.lock_key(kind), version, nx=True, px=LOCK_MS))
        if not taken:
            raise ListBusy(
                f"another import of the {kind} list is under way; wait for it to finish"
                f" (or, if it was killed, at most {LOCK_MS // 1000} s)"
            )
        building = self._prefix + "lists:building"
        in_force = (await self.current(kind)).versions
        for entry in await self._call(self._redis.smembers(building)):
            left_kind, _, left_version = _text(entry).partition(":")
            if left_kind == kind:
                if left_version not in in_force:  # never free what readers use
                    await self.free(kind, left_version)
                await self._call(self._redis.srem(building, entry))
        await self._call(self._redis.sadd(building, f"{kind}:{version}"))
        return version

    async def renew(self, kind: str, version: str) -> None:
        renewed = await self._call(self._renew(keys=[self.lock_key(kind)], args=[version, LOCK_MS]))
        if not renewed:
            raise ListBusy(f"the import lock of the {kind} list was lost (Redis paused too long?)")

    async def release(self, kind: str, version: str) -> None:
        """Forget the build of `version` (swapped in or freed) and give the lock back."""
        await self._call(self._redis.srem(self._prefix + "lists:building", f"{kind}:{version}"))
        await self._call(self._redis.unlink(self.seen_key(version)))
        await self._call(self._unlock(keys=[self.lock_key(kind)], args=[version]))

    async def hash_size(self, kind: str, version: str) -> int:
        return int(await self._call(self._redis.hlen(self.hash_key(kind, version))))

    async def write(self, base: str, buckets: Buckets, limit: int = INTSET_LIMIT) -> int:
        """Write gathered buckets into a version; how many numbers were new there.

        The commands are sent as built (see Buckets.writes), two in flight on one
        connection: Redis runs one while the next is prepared here."""
        sha = await self._call(self._redis.script_load(_WRITE))
        head = _bulk(base.encode()) + _bulk(str(limit).encode())
        pool = self._redis.connection_pool
        connection = await self._call(cast(Any, pool).get_connection())
        added = 0
        in_flight = 0
        try:
            for count, arguments in buckets.writes(limit):
                command = b"*%d\r\n%s%s%s%s%s" % (
                    count + 5,
                    _bulk(b"EVALSHA"),
                    _bulk(sha.encode() if isinstance(sha, str) else sha),
                    _bulk(b"0"),
                    head,
                    arguments,
                )
                await self._call(connection.send_packed_command(command))
                in_flight += 1
                if in_flight == 2:
                    added += int(await self._call(connection.read_response()))
                    in_flight -= 1
            while in_flight:
                added += int(await self._call(connection.read_response()))
                in_flight -= 1
        except BaseException:
            await connection.disconnect()  # replies may still be on their way
            raise
        finally:
            await pool.release(connection)
        return added

    async def remove(self, base: str, live_key: str, keys: Sequence[str]) -> tuple[int, int]:
        """Remove numbers from a version (`base`, or '') and a live hash (or ''): how many
        were on either, how many were in the version."""
        if not keys:
            return 0, 0
        either, listed = await self._call(self._remove(args=[base, live_key, *keys]))
        return int(either), int(listed)

    async def set_reasons(self, base: str, reasons: Mapping[str, str]) -> None:
        if reasons:
            await self._call(self._redis.hset(base + "why", mapping=cast(Any, reasons)))

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
        keys = [key, self.seen_key(lock_version)]
        return int(await self._call(self._contract_merge(keys=keys, args=args)))

    def seen_key(self, lock_version: str) -> str:
        """The pairs an import has met (contracts: the first row of a pair replaces)."""
        return f"{self._prefix}lists:seen:{lock_version}"

    async def remove_dnc(self, live_key: str, number_key: str) -> bool:
        """A live removal: from the live entries, the list in force and the one being
        built by an import under way (or the import would bring the number back)."""
        keys = [live_key, self.index, self.lock_key("dnc")]
        args: list[str | int] = [self._prefix, number_key, _UNLISTED_MS]
        removed = await self._call(self._dnc_remove(keys=keys, args=args))
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
        keys = [self.index, self._prefix + "lists:building", self.unlisted_key(lock_version)]
        args = [
            kind,
            ",".join(versions),
            json.dumps(meta, separators=(",", ":")),
            f"{kind}:{lock_version}",
            self.base("dnc", target) if kind == "dnc" and target else "",
            *(f"{kind}:{version}" for version in dropping),
        ]
        await self._call(self._swap(keys=keys, args=args))

    async def forget(self, kind: str, version: str) -> None:
        """A dropped version is freed: no later import needs to."""
        await self._call(self._redis.srem(self._prefix + "lists:building", f"{kind}:{version}"))

    def unlisted_key(self, lock_version: str) -> str:
        return f"{self._prefix}lists:unlisted:{lock_version}"

    async def free(self, kind: str, version: str) -> None:
        """Delete one version a few hundred small keys at a time (UNLINK: a big hash is
        freed by a background thread), so Redis never stalls on it."""
        if kind in HASH_KINDS:
            await self._call(self._redis.unlink(self.hash_key(kind, version)))
            return
        for base in self.bases(kind, version):
            index = base + "idx"
            while True:
                # A bucket leaves the index only once its keys are gone: stopped half-way,
                # a later free finds what is left.
                buckets = await self._call(self._redis.srandmember(index, _FREE_CHUNK))
                if not buckets:
                    break
                names = [_text(b) for b in buckets]
                await self._call(
                    self._redis.unlink(
                        *(f"{base}s:{b}" for b in names), *(f"{base}b:{b}" for b in names)
                    )
                )
                await self._call(self._redis.srem(index, *names))
            await self._call(self._redis.unlink(index, base + "why"))

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
