"""The facts of a decision: the one script every decision runs, the batcher that sends
the decisions of concurrent sessions together, and the encodings of what it reads back.

Layout and reasons: docs/data-model.md; key names: dialguard.store.keys.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Generic, TypeVar

from dialguard.model import Consent, Contract, DncEntry, Facts, OptoutResult, Sector
from dialguard.store.errors import StoreUnavailable
from dialguard.store.keys import CLEAR, LIST_FIELDS, LISTED, LUA_PARTS, Keys, meta_field
from dialguard.store.packed import LUA_PACKED, unpack_consent, unpack_contracts

__all__ = [
    "FACTS",
    "FACTS_PER_REQUEST",
    "MAX_BATCH",
    "Batcher",
    "Decoder",
    "FactsRequest",
    "ListsInForce",
    "Metas",
    "decode_batch",
    "decode_facts",
    "encode_dnc",
    "encode_live_consent",
    "facts_formats",
    "from_ms",
    "later_consent",
    "merge_contracts",
    "ms",
]

# The lists index's fields the script reads: the version(s) in force of each kind, then
# the registry result sets' metadata.
LUA_LIST_FIELDS = (
    "local LIST_FIELDS = {"
    + ", ".join(f"'{name}'" for name in (*LIST_FIELDS, meta_field("optout")))
    + "}\n"
)
# How many version formats lead ARGV (see facts_formats).
FORMATS = 5
# How many keys lead KEYS, before the attempts keys (see Store._shared_keys).
# An entry of a packed list (store/packed.py), from the top bucket down the split ones:
# the decision's script and a scrub's (store/bulk.py) read consents and contracts alike.
# The field is the principal's id (`id`, and `id_text` its digits) times 10^level plus
# the number's last `level` digits, as the write script stores it, written from the
# digits: a Lua number given to redis.call is printed with printf's float formatting,
# which cost a scrub more than the lookup it was for. `integer`: digits as Redis reads
# an integer argument (no leading zero).
LUA_PACKED_LOOKUP = """
local function integer(digits)
  if string.byte(digits, 1) ~= 48 then return digits end
  return string.match(digits, '^0*(%d+)$')
end
local function packed(base, n, id, id_text)
  if not base or not id then return false end
  local level = TOP
  while true do
    local field = id_text
    if level > 0 then
      local off = string.sub(n, -level)
      field = id > 0 and id_text .. off or integer(off)
    end
    local key = base .. level .. string.sub(n, 1, #n - level)
    local r = redis.call('HMGET', key, field, SPLIT)
    if r[1] then
      if r[1] == STUB then return redis.call('HGET', base .. OVERFLOW, n .. '|' .. id) end
      return r[1]
    end
    if not r[2] or level == 0 then return false end
    level = level - 1
  end
end
"""
SHARED_KEYS = 9

# The facts for every decision waiting in one event-loop turn: one script call, one round
# trip, one reply to parse, however many sessions are in flight.
#
# The 30-day cap is checked and counted in the same script: when a call could count (the
# rules that need no facts let it through), the script reserves its slot if one is left.
# Scripts run one at a time inside Redis, so two concurrent calls to one number can never
# both take the last slot. A call the rules then deny gives its slot back (`release`).
# A read that failed or came too late on our side may still run in Redis later (the
# command sits in its socket buffer while it is frozen): `cancel_later` removes the slot
# and leaves a tombstone, and a reservation whose id has a tombstone is never made, so
# either order of arrival ends with no slot taken.
#
# The imported lists are versioned (dialguard.store.lists): the script reads which
# versions are in force and then their buckets, all in one atomic step, so a decision
# sees one version of each list, whole. A number is in a bucket as a member of its intset
# or a bit of its bitmap. Registry result sets are read newest check first; the first that
# has the number answers, a listing winning within a set. A consent or contract is an
# entry of a small hash, found by the principal's id and the number (store/packed.py).
#
# A number on the company's list (live, then imported) answers as such; otherwise a
# do-not-call of the principal's own (dnc:principal) does.
#
# KEYS: the lists index, the live do-not-call hash, withdrawals, refusals, the tombstones,
# the live consents and contracts, the principals' ids, the principals' do-not-call
# hash, then one attempts key per request. ARGV: the formats of a version's key (dnc
# base, registry listed and clear bases, consent and contract bases: see keys.py), then
# per request the number's key, the number|principal field, the start of the attempt
# window (attempts at or before it are dropped), the cap (0: do not reserve), the attempt
# id, now, the window length (the attempts key's lifetime), all in ms. The reply ends
# with the do-not-call version and the registry result sets' metadata (dates and
# references for the evidence).
FACTS = (
    LUA_PARTS
    + LUA_PACKED
    + LUA_PACKED_LOOKUP
    + LUA_LIST_FIELDS
    + f"local FORMATS = {FORMATS}\n"
    + f"local FIRST = {SHARED_KEYS + 1}\n"
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
local function has(base, bucket, m)
  return redis.call('SISMEMBER', base .. SET .. bucket, m) == 1
    or redis.call('GETBIT', base .. BITMAP .. bucket, m) == 1
end
local ids, id_texts = {}, {}
local function id_of(principal)
  local id = ids[principal]
  if id == nil then
    id = redis.call('HGET', KEYS[8], principal)
    id = id and tonumber(id) or false
    ids[principal] = id
    id_texts[principal] = id and string.format('%d', id)
  end
  return id, id_texts[principal]
end
local out = {}
for i = FIRST, #KEYS do
  local a = FORMATS + (i - FIRST) * 7
  local n, np, start, cap = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  local attempts = KEYS[i]
  local bucket, m = string.sub(n, 1, -5), tonumber(string.sub(n, -4))
  local d = redis.call('HGET', KEYS[2], n)
  if not d and dnc and has(dnc, bucket, m) then
    d = 'I|' .. (redis.call('HGET', dnc .. WHY, n) or '')
  end
  if not d then
    local own = redis.call('HGET', KEYS[9], np)
    if own then d = 'P|' .. own end
  end
  out[#out + 1] = d
  local o = false
  for k = 1, #sets do
    if has(listed[k], bucket, m) then o = sets[k] .. '|L' break end
    if has(clear[k], bucket, m) then o = sets[k] .. '|C' break end
  end
  out[#out + 1] = o
  local id, id_text = false, false
  if consent or contract then id, id_text = id_of(string.sub(np, #n + 2)) end
  out[#out + 1] = packed(consent, n, id, id_text)
  out[#out + 1] = redis.call('HGET', KEYS[3], np)
  out[#out + 1] = packed(contract, n, id, id_text)
  out[#out + 1] = redis.call('HGET', KEYS[4], np)
  if cap > 0 and not redis.call('ZSCORE', KEYS[5], ARGV[a + 5]) then
    redis.call('ZREMRANGEBYSCORE', attempts, '-inf', start)
    local count = redis.call('ZCARD', attempts)
    out[#out + 1] = count
    if count < cap then
      redis.call('ZADD', attempts, ARGV[a + 6], ARGV[a + 5])
      redis.call('PEXPIRE', attempts, ARGV[a + 7])
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  else
    out[#out + 1] = redis.call('ZCOUNT', attempts, '(' .. start, '+inf')
    out[#out + 1] = 0
  end
  out[#out + 1] = redis.call('HGET', KEYS[6], np)
  out[#out + 1] = redis.call('HGET', KEYS[7], np)
end
out[#out + 1] = lists[1] or false
out[#out + 1] = lists[5] or false
return out
"""
)
FACTS_PER_REQUEST = 10


def facts_formats(keys: Keys) -> list[str]:
    """The version formats the facts script's ARGV starts with, in its order."""
    return [
        keys.base_format("dnc"),
        keys.base_format("optout", LISTED),
        keys.base_format("optout", CLEAR),
        keys.packed_format("consent"),
        keys.packed_format("contract"),
    ]


# A batch larger than this waits for the next turn: it keeps one script call short
# (each request costs Redis a few microseconds) and the argument list bounded.
MAX_BATCH = 256
# Batches in flight at once per kind. One: what arrives while a call is out waits for it
# and leaves with the next, so the batch grows with the load (measured: with one in
# flight, batches of ~4.6 at saturation and 278 µs of CPU per session; with two, ~2.4
# and 343 µs). Each batch waits at most one round trip more.
MAX_IN_FLIGHT = 1


# (number key, number|principal field, attempts key, window start ms, cap, attempt id,
#  now ms, window ms)
FactsRequest = tuple[str, str, str, int, int, str, int, int]

Req = TypeVar("Req")
Res = TypeVar("Res")


class Batcher(Generic[Req, Res]):
    """Send the requests of concurrent sessions together, one call in flight at a time.

    A busy FastAGI node has hundreds of sessions in flight; one script call per session
    costs ~120 µs of client CPU each. Here a request goes out at once (on the next loop
    turn, with whatever else arrived in the same turn) unless MAX_IN_FLIGHT calls are
    already out; the requests that arrive meanwhile go out together when one returns.
    Under load the batch grows with the load; a lone request (the CLI, a quiet node)
    waits for nothing.
    """

    def __init__(
        self,
        send: Callable[[list[Req]], Awaitable[list[Res | Exception]]],
        linger_s: float = 0.0,
    ) -> None:
        self._send = send
        self._linger_s = linger_s  # > 0: wait that long to gather more (off the answer's path)
        self._waiting: list[tuple[Req, asyncio.Future[Res]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def submit(self, request: Req, timeout_s: float | None = None) -> Res:
        """The request's result; TimeoutError if it has none within `timeout_s` (the
        request may still go out: its result is then dropped)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Res] = loop.create_future()
        self._waiting.append((request, future))
        if self._in_flight < MAX_IN_FLIGHT and not self._scheduled:
            self._scheduled = True
            if self._linger_s:
                loop.call_later(self._linger_s, self._flush)
            else:
                loop.call_soon(self._flush)
        if timeout_s is None:
            return await future
        # A timer on the future itself: ~1.2 µs per await where asyncio.timeout cost 6-8
        # (measured on 3.11 with uvloop), on every decision's path.
        expiry = loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()

    async def drain(self, timeout_s: float) -> None:
        """Send what waits now (no lingering) and wait for every call out, at most
        `timeout_s`: at shutdown, what was submitted still goes out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._waiting or self._tasks) and loop.time() < deadline:
            self._flush()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=max(deadline - loop.time(), 0))
            else:
                await asyncio.sleep(0)

    def _flush(self) -> None:
        self._scheduled = False
        if self._waiting and self._in_flight < MAX_IN_FLIGHT:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)  # a reference, or the loop may collect a running task
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        try:
            results = await self._send([request for request, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            if len(results) != len(batch):  # a reply we cannot pair up: fail them all
                error = StoreUnavailable(
                    f"Redis answered {len(results)} results for {len(batch)} requests"
                )
                results = [error] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its session may have given up at its deadline
                    continue
                if isinstance(result, Exception):  # this request alone failed
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._flush()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(value: bytes | str | int) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def encode_dnc(reason: str, now: datetime) -> str:
    return f"{ms(now)}|{reason}"


@dataclass(frozen=True, slots=True)
class ListsInForce:
    dnc_version: str
    optout_sets: Mapping[str, Mapping[str, Any]]  # version -> its metadata


class Metas:
    """Decoded list metadata, kept while Redis sends back the same bytes (it changes
    only when an import swaps a list in)."""

    def __init__(self) -> None:
        self._raw: tuple[Any, Any] | None = None
        self._decoded = ListsInForce("", {})

    def decode(self, dnc_version: Any, optout_meta: Any) -> ListsInForce:
        raw = (dnc_version, optout_meta)
        if raw != self._raw:
            sets = json.loads(optout_meta) if optout_meta else []
            self._decoded = ListsInForce(
                _text(dnc_version) if dnc_version else "",
                {str(entry["version"]): entry for entry in sets},
            )
            self._raw = raw
        return self._decoded


def decode_batch(reply: Any, requests: int, metas: Metas) -> list[Facts | Exception]:
    """The facts of each request of one script call, in order. A reply of the wrong shape
    fails every request of the batch closed: nothing in it can be paired with a request."""
    if not isinstance(reply, list) or len(reply) != requests * FACTS_PER_REQUEST + 2:
        size = len(reply) if isinstance(reply, list) else type(reply).__name__
        return [StoreUnavailable(f"unexpected facts reply from Redis ({size})")] * requests
    try:
        lists = metas.decode(reply[-2], reply[-1])
    except (ValueError, KeyError, TypeError) as exc:
        return [StoreUnavailable(f"undecodable list metadata in Redis: {exc}")] * requests
    return [
        decode_facts(reply[i : i + FACTS_PER_REQUEST], lists)
        for i in range(0, len(reply) - 2, FACTS_PER_REQUEST)
    ]


def decode_facts(reply: Sequence[Any], lists: ListsInForce) -> Facts | Exception:
    """Facts from the script's reply; an entry that does not decode (written by hand, or
    by another version) fails this one decision closed instead of crashing the session."""
    try:
        return _decode_entries(reply, lists)
    except (ValueError, OverflowError, KeyError, IndexError, TypeError) as exc:
        return StoreUnavailable(f"undecodable entry in Redis: {exc}")


class Decoder:
    """`decode_facts` for many numbers in a row (a scrub): the entries that repeat from
    number to number (an imported do-not-call list's, a registry result set's answers)
    are decoded once while the lists in force stay the same."""

    KEPT = 10_000  # distinct repeated entries: a list's reasons, its result sets

    def __init__(self) -> None:
        self._lists: ListsInForce | None = None
        self._dnc: dict[bytes, DncEntry] = {}
        self._optout: dict[bytes, OptoutResult] = {}

    def facts(self, entry: Sequence[Any], lists: ListsInForce) -> Facts | Exception:
        """The facts of one number's entries (the script's reply without `reserved`)."""
        if lists is not self._lists:
            self._lists = lists
            self._dnc.clear()
            self._optout.clear()
        try:
            dnc, optout, consent, withdrawal, contracts, refusal, attempts, live, live_contracts = (
                entry
            )
            listed = None
            if dnc:
                listed = self._dnc.get(dnc)
                if listed is None:
                    listed = _decode_dnc(dnc, lists)
                    if dnc[:2] == b"I|" and len(self._dnc) < self.KEPT:  # an imported list's
                        self._dnc[dnc] = listed
            registry = None
            if optout:
                registry = self._optout.get(optout)
                if registry is None:
                    registry = _decode_optout(optout, lists)
                    if len(self._optout) < self.KEPT:
                        self._optout[optout] = registry
            return Facts(
                dnc=listed,
                optout=registry,
                consent=later_consent(
                    unpack_consent(consent) if consent else None,
                    _decode_consent(live) if live else None,
                ),
                withdrawn_at=from_ms(withdrawal) if withdrawal else None,
                contracts=_contracts(contracts, live_contracts),
                refused_at=from_ms(refusal) if refusal else None,
                attempts_30d=int(attempts),
            )
        except (ValueError, OverflowError, KeyError, IndexError, TypeError) as exc:
            return StoreUnavailable(f"undecodable entry in Redis: {exc}")


def _contracts(imported: bytes | None, live: bytes | None) -> tuple[Contract, ...]:
    contracts = unpack_contracts(imported) if imported else ()
    return merge_contracts(contracts, live) if live else contracts


def _decode_entries(reply: Sequence[Any], lists: ListsInForce) -> Facts:
    (
        dnc,
        optout,
        consent,
        withdrawal,
        contracts,
        refusal,
        attempts,
        reserved,
        live_consent,
        live_contracts,
    ) = reply
    return Facts(
        dnc=_decode_dnc(dnc, lists) if dnc else None,
        optout=_decode_optout(optout, lists) if optout else None,
        consent=later_consent(
            unpack_consent(consent) if consent else None,
            _decode_consent(live_consent) if live_consent else None,
        ),
        withdrawn_at=from_ms(withdrawal) if withdrawal else None,
        contracts=_contracts(contracts, live_contracts),
        refused_at=from_ms(refusal) if refusal else None,
        attempts_30d=int(attempts),
        reserved=bool(reserved),
    )


def later_consent(imported: Consent | None, live: Consent | None) -> Consent | None:
    """The consent given last: an imported list and the consents added live since both
    hold one per number and principal, and the later word answers (a withdrawal between
    the two is judged against it by the rules)."""
    if imported is None or (live is not None and live.given_at >= imported.given_at):
        return live
    return imported


def encode_live_consent(given_ms: int, expires_ms: int, proof_ref: str) -> str:
    """The live consent hash's value (read back by _decode_consent)."""
    return f"{given_ms}|{expires_ms or ''}|{proof_ref}"


def merge_contracts(imported: tuple[Contract, ...], live: bytes | str) -> tuple[Contract, ...]:
    """The imported contracts of a pair with what was added or ended live, by id.

    The live entry keeps, per contract id, the latest `contract add` (sector, start, end,
    when it was recorded) and the latest `contract end` (the last day, when it was
    recorded): an end recorded after the add (or with no add: the imported contract)
    brings its end date forward; an add recorded after an end stands as it is (the
    contract was signed again)."""
    contracts = {contract.contract_id: contract for contract in imported}
    for contract_id, item in json.loads(live).items():
        sector, start, end, add_ms, last_day, end_ms = item
        contract = contracts.get(contract_id)
        if int(add_ms):
            contract = Contract(
                contract_id,
                Sector(sector),
                date.fromisoformat(start),
                date.fromisoformat(end) if end else None,
            )
        if contract is not None and int(end_ms) and int(end_ms) >= int(add_ms):
            day = date.fromisoformat(last_day)
            contract = replace(contract, end=min(contract.end or day, day))
        if contract is not None:
            contracts[contract_id] = contract
    return tuple(contracts.values())


def _decode_dnc(raw: bytes, lists: ListsInForce) -> DncEntry:
    first, _, reason = _text(raw).partition("|")
    if first == "I":  # on the imported list
        return DncEntry(reason=reason or "imported", added_at=None, list_version=lists.dnc_version)
    if first == "P":  # the principal's own: P|added_ms|reason
        added, _, reason = reason.partition("|")
        return DncEntry(reason=reason, added_at=from_ms(added), principal_only=True)
    return DncEntry(reason=reason, added_at=from_ms(first) if first else None)


def _decode_optout(raw: bytes, lists: ListsInForce) -> OptoutResult:
    version, _, status = _text(raw).partition("|")
    entry = lists.optout_sets[version]
    return OptoutResult(
        listed=status == "L",
        checked_on=date.fromisoformat(entry["checked_on"]),
        ref=entry.get("ref") or f"result set {version}",
    )


def _decode_consent(raw: bytes) -> Consent:
    """A live consent (`given_ms|expires_ms|proof_ref`)."""
    given, expires, proof = _text(raw).split("|", 2)
    return Consent(
        given_at=from_ms(given),
        expires_at=from_ms(expires) if expires else None,
        proof_ref=proof,
    )
