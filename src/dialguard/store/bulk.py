"""The facts of many numbers at once, read only: a lead file scrubbed before a campaign.

A million numbers must be read in seconds, and the decision's script (store.facts.FACTS)
spends most of its time per number in a dozen calls from Lua into Redis. SCAN_FACTS
reads the same keys the same way (the lists in force, whole, in one atomic step; the live
entries; the attempts in the window) and gives the same answers, but gets a whole
batch's live entries (do-not-call, a principal's own do-not-call, consents, contracts),
withdrawals and refusals with one HMGET each, and which numbers the packed consents and
contracts have a bucket for with one SMISMEMBER each; the lists' buckets, the packed
entries and the attempts stay number by number. It reserves nothing and writes
nothing. tests/test_scrub_facts.py holds its answers equal to the decision script's, but
for what a scrub asks it to leave unread (what the rules cannot read: a withdrawal of a
number without a consent always; by the scan's options, the registry as the consent
regime reads it, more of a number on the company's list, the attempts of a number without
a consent or a contract), and it sends the attempts' instants of a number at a cap with
its facts, where they took one more read.

Inside Redis a lookup costs about what its key's place in the keyspace costs to find
(random keys: cache misses), so what is left is mostly one lookup per number per list:
a do-not-call bucket, a packed consent, a registry bucket for a number with a consent.

The requests go pre-encoded (RESP: redis-py encoding each argument cost more than the
rest of the scrub), MAX_BATCH numbers to a call, and several calls are in flight on one
connection: Redis runs one while the client decides the numbers of the one before. A
call is kept as short as a busy node's own batches, so a scrub run beside `serve` delays
its decisions by at most that much at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dialguard.store.errors import StoreUnavailable
from dialguard.store.facts import (
    FORMATS,
    LUA_LIST_FIELDS,
    LUA_PACKED_LOOKUP,
    MAX_BATCH,
    ListsInForce,
    Metas,
    facts_formats,
    ms,
)
from dialguard.store.keys import LUA_PARTS, Keys
from dialguard.store.packed import LUA_PACKED
from dialguard.store.resp import bulk, evalsha

__all__ = [
    "IN_FLIGHT",
    "MAX_BATCH",
    "NOTHING",
    "PER_NUMBER",
    "SCAN_FACTS",
    "BulkFacts",
    "Scanned",
    "each_number",
    "split_times",
]

# Script calls sent ahead of the one being read: enough that Redis always has one to run
# while the client decides the batch before (each call holds a few milliseconds of work).
IN_FLIGHT = 4
SCAN_SHARED_KEYS = 8
# Attempts keys one EXISTS asks about (SCAN_FACTS): at one number in twenty with
# attempts (a file's share), 8 cost ~0.5 calls a number where ZCOUNT costs one.
EXISTS_GROUP = 8
# Numbers of a batch whose packed buckets SCAN_FACTS asks about first (`present`).
PRESENCE_SAMPLE = 32

# KEYS: the lists index, the live do-not-call hash, withdrawals, refusals, the live
# consents and contracts, the principals' ids, the principals' own do-not-call entries,
# then one attempts key per number. ARGV: the version formats
# (store.facts.facts_formats), the principal, then '1' or '0' for each of
# `consent_regime`, `dnc_final` and `basis_first` (BulkFacts.scan), the count from which
# the attempts' instants are sent and the start (ms) of the window they are taken from,
# then per number its key and the start of its attempt window (ms; attempts at or
# before it are not counted). The reply: per number, nil when it has nothing (no entry,
# no attempt), else as FACTS gives them (but for what the options leave unread) the
# do-not-call entry, the registry answer, the imported consent, the withdrawal, the
# imported contracts, the refusal, the attempts counted, the live consent and the live
# contracts, then for a count at the cap or over it the instants (ms, oldest first) of
# its attempts; then the do-not-call version and the registry result sets' metadata.
SCAN_FACTS = (
    LUA_PARTS
    + LUA_PACKED
    + LUA_PACKED_LOOKUP
    + LUA_LIST_FIELDS
    + f"local FORMATS = {FORMATS}\n"
    + f"local SHARED = {SCAN_SHARED_KEYS}\n"
    + f"local GROUP = {EXISTS_GROUP}\n"
    + f"local SAMPLE = {PRESENCE_SAMPLE}\n"
    + """
local lists = redis.call('HMGET', KEYS[1], unpack(LIST_FIELDS))
local dnc = lists[1] and string.format(ARGV[1], lists[1])
local sets, listed, clear = {}, {}, {}
if lists[2] then
  for v in string.gmatch(lists[2], '[^,]+') do
    sets[#sets + 1] = v
    listed[#sets] = string.format(ARGV[2], v)
    clear[#sets] = string.format(ARGV[3], v)
  end
end
local consent = lists[3] and string.format(ARGV[4], lists[3])
local contract = lists[4] and string.format(ARGV[5], lists[4])
local principal = ARGV[FORMATS + 1]
-- '1': the registry read as the consent regime reads it (policy.optout_regime_from).
local consent_regime = ARGV[FORMATS + 2] == '1'
-- '1': a number on the company's list gets nothing more (the list denies first).
local dnc_final = ARGV[FORMATS + 3] == '1'
-- '1': a number without a consent or contract gets no attempts (no basis, no call).
local basis_first = ARGV[FORMATS + 4] == '1'
-- A count at this cap or over it comes with its attempts' instants, after this start.
local cap = tonumber(ARGV[FORMATS + 5])
local times_after = '(' .. ARGV[FORMATS + 6]
local HEAD = 6
local suffix = '|' .. principal
local id = (consent or contract) and redis.call('HGET', KEYS[7], principal)
id = id and tonumber(id) or false
local id_text = id and string.format('%d', id)
local count = #KEYS - SHARED
local numbers, fields, buckets, members = {}, {}, {}, {}
for i = 1, count do
  local n = ARGV[FORMATS + HEAD - 1 + 2 * i]
  numbers[i] = n
  fields[i] = n .. suffix
  buckets[i] = string.sub(n, 1, -5)
  members[i] = integer(string.sub(n, -4))  -- the offset, as SISMEMBER is given it
end
-- A dense list's buckets for the whole batch (or the numbers `which` lists): the bitmaps
-- with one MGET (a bucket kept as an intset, or none, answers nil), so a number costs
-- one SISMEMBER at most, where asking SISMEMBER then GETBIT of each number cost two calls.
local function dense(base, which)
  local names, prefix = {}, base .. BITMAP
  if not which then
    for i = 1, count do names[i] = prefix .. buckets[i] end
    return {base .. SET, redis.call('MGET', unpack(names))}
  end
  local bitmaps = {}
  if #which > 0 then
    for j = 1, #which do names[j] = prefix .. buckets[which[j]] end
    local got = redis.call('MGET', unpack(names))
    for j = 1, #which do bitmaps[which[j]] = got[j] end
  end
  return {base .. SET, bitmaps}
end
-- GETBIT's answer read from the bitmap's bytes (bit 0 the first byte's highest), else
-- the intset's: the number is in the list when either has it, as FACTS asks.
local function has(list, i)
  local bitmap = list[2][i]
  if bitmap then
    local m = tonumber(members[i])
    local byte = string.byte(bitmap, math.floor(m / 8) + 1)
    if byte and bit.band(byte, bit.rshift(128, m % 8)) ~= 0 then return true end
  end
  return redis.call('SISMEMBER', list[1] .. buckets[i], members[i]) == 1
end
local dnc_list = dnc and dense(dnc)
-- Which numbers' top buckets a packed list has at all (its index names every bucket it
-- ever wrote): a list of a few thousand contracts has none for most numbers, and a
-- number whose top bucket is not there has no entry (what `packed` would find). A list
-- that has the first SAMPLE numbers' buckets nearly all (consents of half the leads)
-- is looked up for the rest straight away: asking would spare few lookups.
local names, named = {}, 0  -- the numbers' top buckets, made as they are needed
local function name_up_to(last)
  for i = named + 1, last do
    local n = numbers[i]
    names[i] = TOP .. string.sub(n, 1, #n - TOP)
  end
  if last > named then named = last end
end
local function present(base)
  if not base or not id then return {} end
  local first = math.min(SAMPLE, count)
  name_up_to(first)
  local index = base .. INDEX
  local there = redis.call('SMISMEMBER', index, unpack(names, 1, first))
  local found = 0
  for i = 1, first do found = found + there[i] end
  if first == count then return there end
  if found * 8 >= first * 7 then
    for i = first + 1, count do there[i] = 1 end
    return there
  end
  name_up_to(count)
  local rest = redis.call('SMISMEMBER', index, unpack(names, first + 1, count))
  for i = 1, #rest do there[first + i] = rest[i] end
  return there
end
local consents_there, contracts_there = present(consent), present(contract)
-- A hash that does not exist (no live contract yet, say) answers nothing for any number.
local function each(key, names)
  if redis.call('EXISTS', key) == 0 then return {} end
  return redis.call('HMGET', key, unpack(names))
end
local live = each(KEYS[2], numbers)
local refusals = each(KEYS[4], fields)
local live_consents = each(KEYS[5], fields)
local live_contracts = each(KEYS[6], fields)
local own = each(KEYS[8], fields)
local found, wanted, registry, consented = {}, {}, {}, {}
for i = 1, count do
  local n = numbers[i]
  local d = live[i]
  if not d and dnc_list and has(dnc_list, i) then
    d = 'I|' .. (redis.call('HGET', dnc .. WHY, n) or '')
  end
  if not d and own[i] then d = 'P|' .. own[i] end
  if d and dnc_final then
    found[i] = {d, false, false, false, false, false, 0, false, false}
  else
    local c = consents_there[i] == 1 and packed(consent, n, id, id_text) or false
    local k = contracts_there[i] == 1 and packed(contract, n, id, id_text) or false
    local lc, lk = live_consents[i] or false, live_contracts[i] or false
    found[i] = {d or false, false, c, false, k, refusals[i] or false, 0, lc, lk}
    if c or lc then consented[#consented + 1] = i end
    -- The consent regime reads a listing only once a consent is found.
    if not consent_regime or c or lc then registry[#registry + 1] = i end
    if not basis_first or c or lc or k or lk then wanted[#wanted + 1] = i end
  end
end
-- A withdrawal is read of a consent (policy._consent_basis): of the numbers with one.
if #consented > 0 then
  local asked = {}
  for j = 1, #consented do asked[j] = fields[consented[j]] end
  local withdrawals = each(KEYS[3], asked)
  for j = 1, #consented do found[consented[j]][4] = withdrawals[j] or false end
end
-- The registry's answers, newest result set first, of the numbers that need them.
for k = 1, #sets do
  if #registry == 0 then break end
  local listed_list = dense(listed[k], registry)
  -- A newer set's clear answer hides an older set's listing: only the oldest set's
  -- clear answers go unread.
  local clear_list = (not consent_regime or k < #sets) and dense(clear[k], registry)
  local unanswered = {}
  for _, i in ipairs(registry) do
    if has(listed_list, i) then
      found[i][2] = sets[k] .. '|L'
    elseif clear_list and has(clear_list, i) then
      found[i][2] = sets[k] .. '|C'
    else
      unanswered[#unanswered + 1] = i
    end
  end
  registry = unanswered
end
-- The attempts counted of each number that may need them. Most numbers have no
-- attempts key at all (ZCOUNT would answer 0): while few keys are met, one EXISTS of
-- GROUP keys answers for them all when none is there; ZCOUNT asks each of a group where
-- some are. Keys met often (over one in five), ZCOUNT alone: a group's EXISTS would
-- seldom spare its calls.
local since, after = nil, nil  -- the last window start, and ZCOUNT's bound of it
local seen, met = 0, 0
for first = 1, #wanted, GROUP do
  local last = math.min(first + GROUP - 1, #wanted)
  local some = true
  if met * 5 <= seen then
    local names = {}
    for j = first, last do names[#names + 1] = KEYS[SHARED + wanted[j]] end
    local there = redis.call('EXISTS', unpack(names))
    met, some = met + there, there > 0
  end
  seen = seen + last - first + 1
  if some then
    for j = first, last do
      local i = wanted[j]
      local start = ARGV[FORMATS + HEAD + 2 * i]
      if start ~= since then since, after = start, '(' .. start end
      local a = redis.call('ZCOUNT', KEYS[SHARED + i], after, '+inf')
      local entry = found[i]
      entry[7] = a
      -- At a cap, callable_from needs the instants: sent now, not asked for later.
      if a >= cap then
        local scored = redis.call('ZRANGEBYSCORE', KEYS[SHARED + i], times_after, '+inf',
          'WITHSCORES')
        local times = {}
        for p = 2, #scored, 2 do times[#times + 1] = scored[p] end
        entry[10] = times
      end
    end
  end
end
local out = {}
for i = 1, count do
  local e = found[i]
  -- Most numbers have nothing at all: one nil says so, where nine would.
  if e[1] or e[2] or e[3] or e[4] or e[5] or e[6] or e[7] ~= 0 or e[8] or e[9] then
    out[i] = e
  else
    out[i] = false
  end
end
out[count + 1] = lists[1] or false
out[count + 2] = lists[5] or false
return out
"""
)
# Entries of the reply per number (one more, the attempts' instants, for a count at the
# cap: `split_times`).
PER_NUMBER = 9
# A number's entries when the reply says it has none (nil): no entry, no attempt.
NOTHING: tuple[Any, ...] = (None, None, None, None, None, None, 0, None, None)


def each_number(entries: list[Any]) -> Iterator[tuple[Any, ...]]:
    """Each number's PER_NUMBER entries, in order, from a Scanned's `entries` (the
    attempts' instants left out: `split_times`)."""
    for entry in entries:
        yield NOTHING if entry is None else split_times(entry)[0]


def split_times(entry: list[Any]) -> tuple[tuple[Any, ...], list[int] | None]:
    """A number's PER_NUMBER entries from the reply, and the instants (ms, oldest first)
    of its attempts in the `times_window_days` when the count reached `times_from`
    (BulkFacts.scan), else None."""
    if len(entry) == PER_NUMBER:
        return tuple(entry), None
    times = entry.pop()
    # Scores as Redis writes a double: an integral one without a fraction, but read
    # through float as redis-py reads a score, whatever form it takes.
    return tuple(entry), sorted(int(float(t)) for t in times)


T = TypeVar("T")


class Scanned(Generic[T]):
    """One batch's answer: the caller's payload, the script's reply (per number, in
    order, None when it has nothing, else its PER_NUMBER entries: `each_number`) and the
    lists in force it read."""

    __slots__ = ("entries", "lists", "payload")

    def __init__(self, payload: T, entries: list[Any], lists: ListsInForce) -> None:
        self.payload = payload
        self.entries = entries
        self.lists = lists


class BulkFacts:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._metas = Metas()

    async def scan(
        self,
        principal: str,
        now: datetime,
        batches: Iterable[tuple[T, Sequence[tuple[str, int]]]],
        in_flight: int = IN_FLIGHT,
        consent_regime: bool = False,
        *,
        dnc_final: bool = False,
        basis_first: bool = False,
        times_from: int | None = None,
        times_window_days: int = 0,
    ) -> AsyncGenerator[Scanned[T], None]:
        """The facts for `principal` at `now` of each batch of (number key, window in
        days), at most MAX_BATCH a batch, in the order of `batches` (an empty batch comes
        back in its turn without a call). `consent_regime`: the registry read only as the
        consent regime reads it (policy.optout_regime_from): the listings of numbers with
        a consent, and no clear answer of the oldest result set (a newer set's still
        hides an older listing); a number gets no registry answer otherwise (a lookup or
        two less). `dnc_final`: a number on the company's list (live, imported or the
        principal's own) gets that entry alone. `basis_first`: a number without a consent
        or a contract (imported or live) gets no attempts (counted 0). `times_from`: a
        count at least this comes with the instants of its attempts in the last
        `times_window_days` (`split_times`). StoreUnavailable when Redis fails."""
        keys = self._keys
        now_ms = ms(now)
        try:
            sha = await self._redis.script_load(SCAN_FACTS)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        sha_text = sha if isinstance(sha, str) else bytes(sha).decode()
        shared = [keys.index, keys.dnc_live, keys.withdrawal, keys.refusal, keys.consent_live]
        shared += (keys.contract_live, keys.principals, keys.dnc_principal)
        assert len(shared) == SCAN_SHARED_KEYS
        keys_head = b"".join(bulk(key.encode()) for key in shared)
        arguments_head = b"".join(bulk(f.encode()) for f in facts_formats(keys))
        arguments_head += bulk(principal.encode())
        for flag in (consent_regime, dnc_final, basis_first):
            arguments_head += bulk(b"1" if flag else b"0")
        # No count reaches it: no instants sent.
        cap = times_from if times_from is not None else 2**31
        arguments_head += bulk(b"%d" % cap)
        arguments_head += bulk(b"%d" % (now_ms - times_window_days * 86_400_000))
        fixed = len(shared) + FORMATS + 6  # the arguments before the numbers' own
        attempts_prefix = keys.attempts_prefix(principal).encode()
        prefix = attempts_prefix.decode()
        prefix_size = len(attempts_prefix)  # in bytes: a principal's name may be any text
        starts: dict[int, str] = {}  # window days -> the window's start, encoded

        def start_of(window_days: int) -> str:
            text = bulk(b"%d" % (now_ms - window_days * 86_400_000)).decode()
            starts[window_days] = text
            return text

        def command(requests: Sequence[tuple[str, int]]) -> bytes:
            if len(requests) > MAX_BATCH:
                raise ValueError(f"at most {MAX_BATCH} numbers a batch")
            count = len(requests)
            # Built as text and encoded once, a number key's length in characters its
            # length in bytes: a store key is digits.
            keys_text = "".join(
                [f"${prefix_size + len(k)}\r\n{prefix}{k}\r\n" for k, _ in requests]
            )
            arguments_text = "".join(
                [f"${len(k)}\r\n{k}\r\n{starts.get(w) or start_of(w)}" for k, w in requests]
            )
            if not arguments_text.isascii():
                raise ValueError("a number's store key is digits")
            encoded = (keys_head, keys_text.encode(), arguments_head, arguments_text.encode())
            return evalsha(
                sha_text, (), fixed + 3 * count, b"".join(encoded), keys=len(shared) + count
            )

        pool: Any = self._redis.connection_pool  # get_connection is untyped in redis-py
        try:
            connection: Any = await pool.get_connection()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        waiting: deque[tuple[T, int]] = deque()  # payload, numbers (0: nothing sent)
        lists = ListsInForce("", {})
        try:
            for payload, requests in batches:
                if requests:
                    await connection.send_packed_command(command(requests))
                waiting.append((payload, len(requests)))
                while len(waiting) > in_flight or (waiting and not waiting[0][1]):
                    scanned, lists = await self._answer(connection, *waiting.popleft(), lists)
                    yield scanned
            while waiting:
                scanned, lists = await self._answer(connection, *waiting.popleft(), lists)
                yield scanned
        except (RedisError, OSError) as exc:
            await connection.disconnect()
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        except BaseException:
            await connection.disconnect()  # replies may still be on their way
            raise
        finally:
            await pool.release(connection)

    async def _answer(
        self, connection: Any, payload: T, count: int, lists: ListsInForce
    ) -> tuple[Scanned[T], ListsInForce]:
        if not count:
            return Scanned(payload, [], lists), lists
        reply = await connection.read_response()
        if not isinstance(reply, list) or len(reply) != count + 2:
            size = len(reply) if isinstance(reply, list) else type(reply).__name__
            raise StoreUnavailable(f"unexpected facts reply from Redis ({size})")
        try:
            lists = self._metas.decode(reply[-2], reply[-1])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"undecodable list metadata in Redis: {exc}") from None
        del reply[-2:]
        return Scanned(payload, reply, lists), lists
