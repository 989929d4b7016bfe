"""Every Redis key and script the service uses (docs/data-model.md has the whole layout).

All keys start with the configured prefix, shown here as ``P``; a number's key is its
E.164 digits, a principal is a validated name, so no key is built from raw input:

- the imported lists (do-not-call, registry result sets, consents, contracts): versioned
  and dense, see dialguard.lists;
- ``P dnc:live`` hash: number -> ``added_ms|reason`` (``dnc add``, a do-not-call outcome):
  apart from the imported list, so ``import dnc --replace`` can never drop a request
  made during the day
- ``P withdrawal`` hash: ``number|principal`` -> withdrawn_ms
- ``P refusal`` hash: ``number|principal`` -> refused_ms
- ``P att:principal:number`` sorted set: one member per counted attempt, score = its ms
- ``P cancelled`` sorted set: ids of attempts cancelled while their read was in doubt
  (tombstones, kept an hour)

Withdrawals live apart from consents so that a nightly ``import consent --replace`` from a
CRM can never resurrect a consent the consumer took back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from dialguard.imports import ConsentRow, ContractRow
from dialguard.lists import Lists, StoreUnavailable
from dialguard.model import Consent, Contract, DncEntry, Facts, OptoutResult, Sector
from dialguard.numbers import Number

if TYPE_CHECKING:
    from dialguard.loading import Summary

__all__ = ["Store", "StoreUnavailable", "encode_consent", "encode_contract"]

log = structlog.get_logger("dialguard.store")

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
# The imported lists are versioned (dialguard.lists): the script reads which versions are
# in force and then their buckets, all in one atomic step, so a decision sees one version
# of each list, whole. A number is in a bucket as a member of its intset or a bit of its
# bitmap. Registry result sets are read newest check first; the first that has the number
# answers, a listing winning within a set.
#
# KEYS: the lists index, the live do-not-call hash, withdrawals, refusals, the tombstones,
# then one attempts key per request. ARGV: the key prefix, then per request the number's
# key, the number|principal field, the start of the attempt window (attempts at or before
# it are dropped), the cap (0: do not reserve), the attempt id, now, the window length
# (the attempts key's lifetime), all in ms. The reply ends with the do-not-call version
# and the registry result sets' metadata (dates and references for the evidence).
_FACTS = """
local lists = redis.call('HMGET', KEYS[1], 'dnc', 'optout', 'consent', 'contract',
  'optout:meta')
local prefix = ARGV[1]
local dnc = lists[1] and (prefix .. 'dnc:' .. lists[1] .. ':')
local sets, listed, clear = {}, {}, {}
if lists[2] then
  for v in string.gmatch(lists[2], '[^,]+') do
    sets[#sets + 1] = v
    listed[#sets] = prefix .. 'optout:' .. v .. ':L:'
    clear[#sets] = prefix .. 'optout:' .. v .. ':C:'
  end
end
local consent = lists[3] and (prefix .. 'consent:' .. lists[3])
local contract = lists[4] and (prefix .. 'contract:' .. lists[4])
local function has(base, bucket, m)
  return redis.call('SISMEMBER', base .. 's:' .. bucket, m) == 1
    or redis.call('GETBIT', base .. 'b:' .. bucket, m) == 1
end
local out = {}
for i = 6, #KEYS do
  local a = 1 + (i - 6) * 7
  local n, np, start, cap = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  local attempts = KEYS[i]
  local bucket, m = string.sub(n, 1, -5), tonumber(string.sub(n, -4))
  local d = redis.call('HGET', KEYS[2], n)
  if not d and dnc and has(dnc, bucket, m) then
    d = 'I|' .. (redis.call('HGET', dnc .. 'why', n) or '')
  end
  out[#out + 1] = d
  local o = false
  for k = 1, #sets do
    if has(listed[k], bucket, m) then o = sets[k] .. '|L' break end
    if has(clear[k], bucket, m) then o = sets[k] .. '|C' break end
  end
  out[#out + 1] = o
  out[#out + 1] = (consent and redis.call('HGET', consent, np)) or false
  out[#out + 1] = redis.call('HGET', KEYS[3], np)
  out[#out + 1] = (contract and redis.call('HGET', contract, np)) or false
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
end
out[#out + 1] = lists[1] or false
out[#out + 1] = lists[5] or false
return out
"""
_FACTS_PER_REQUEST = 8

# Cancel attempts whose reservation may or may not have run: remove each from its
# attempts key and leave a tombstone. KEYS: attempts keys, then the tombstones; ARGV: the
# attempt ids, then now and the tombstones' lifetime, in ms.
_CANCEL = """
local tombstones = KEYS[#KEYS]
local now = tonumber(ARGV[#ARGV - 1])
redis.call('ZREMRANGEBYSCORE', tombstones, '-inf', now - tonumber(ARGV[#ARGV]))
for i = 1, #KEYS - 1 do
  redis.call('ZREM', KEYS[i], ARGV[i])
  redis.call('ZADD', tombstones, now, ARGV[i])
end
return #KEYS - 1
"""
# No Redis stalls with a command in its buffer for this long; older tombstones go.
_TOMBSTONE_MS = 3_600_000
# Cancellations waiting for Redis to come back; past this many, the oldest are dropped
# (during an outage, reads were mostly refused outright and reserved nothing).
MAX_PENDING_CANCELS = 100_000

# Give back reserved slots: KEYS attempts keys, ARGV the attempt ids, pairwise.
_RELEASE = """
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[i])
end
return #KEYS
"""

# A batch larger than this waits for the next turn: it keeps one script call short
# (each request costs Redis a few microseconds) and the argument list bounded.
MAX_BATCH = 256
# Batches in flight at once per kind. One: what arrives while a call is out waits for it
# and leaves with the next, so the batch grows with the load (measured: with one in
# flight, batches of ~4.6 at saturation and 278 µs of CPU per session; with two, ~2.4
# and 343 µs). Each batch waits at most one round trip more.
MAX_IN_FLIGHT = 1
# How long released slots wait to go out together. Meanwhile the slot still counts: a
# concurrent call to the same number could be denied FREQUENCY_CAP (never let through).
RELEASE_LINGER_S = 0.05


# (number key, number|principal field, attempts key, window start ms, cap, attempt id,
#  now ms, window ms)
_FactsRequest = tuple[str, str, str, int, int, str, int, int]

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

    async def submit(self, request: Req) -> Res:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Res] = loop.create_future()
        self._waiting.append((request, future))
        if self._in_flight < MAX_IN_FLIGHT and not self._scheduled:
            self._scheduled = True
            if self._linger_s:
                loop.call_later(self._linger_s, self._flush)
            else:
                loop.call_soon(self._flush)
        return await future

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


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(value: bytes | str | int) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class Store:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._facts = client.register_script(_FACTS)
        self._release = client.register_script(_RELEASE)
        self._cancel = client.register_script(_CANCEL)
        self._to_cancel: dict[tuple[str, str], float] = {}  # (attempts key, id) -> since
        self._canceller: asyncio.Task[None] | None = None
        self.lists = Lists(client, prefix)
        self._shared_keys = [
            self.lists.index,
            self._key("dnc:live"),
            self._key("withdrawal"),
            self._key("refusal"),
            self._key("cancelled"),
        ]
        self._metas = _Metas()
        self._facts_batch: Batcher[_FactsRequest, Facts] = Batcher(self._facts_many)
        # Nobody waits for a release: gathering them for a while makes them nearly free.
        self._release_batch: Batcher[tuple[str, str], int] = Batcher(
            self._release_many, linger_s=RELEASE_LINGER_S
        )

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_ms: int) -> Store:
        timeout = timeout_ms / 1000
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # redis-py's default pool caps at 100 connections and then raises; a busy
            # FastAGI node runs hundreds of sessions at once.
            max_connections=2048,
        )
        return cls(client, prefix)

    async def close(self) -> None:
        if self._canceller is not None and self._to_cancel:
            await asyncio.wait({self._canceller}, timeout=1.0)  # one last try
        if self._canceller is not None:
            self._canceller.cancel()
        await self._redis.aclose()

    async def load(
        self, kind: str, rows: Sequence[Any], mode: str = "add", **options: Any
    ) -> Summary:
        """Load rows held in memory as one import (see dialguard.loading.load)."""
        from dialguard import loading  # the loader builds on this module's encodings

        return await loading.load(
            self.lists, kind, rows, mode, live_dnc_key=self.live_dnc_key, **options
        )

    async def live_dnc_census(self) -> tuple[int, int]:
        """(entries, bytes) of the live do-not-call entries."""
        key = self.live_dnc_key
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hlen(key)
                pipe.memory_usage(key)
                size, used = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        return int(size), int(used or 0)

    @property
    def live_dnc_key(self) -> str:
        return self._key("dnc:live")

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    @staticmethod
    def _pair(number: Number, principal: str) -> str:
        return f"{number.key}|{principal}"

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None

    # --- the hot path ---------------------------------------------------------------------

    async def facts(
        self,
        number: Number,
        principal: str,
        now: datetime,
        window_days: int,
        reserve: tuple[int, str] | None = None,
    ) -> Facts:
        """What the store knows about `number` for `principal`, in one round trip.

        With `reserve=(cap, attempt_id)`, also count this attempt if fewer than `cap` were
        made in the window (Facts.reserved says whether it was); Facts.attempts_30d is the
        count before this attempt either way.
        """
        window_ms = window_days * 86_400_000
        now_ms = _ms(now)
        cap, attempt_id = reserve if reserve is not None else (0, "")
        request = (
            number.key,
            self._pair(number, principal),
            self._key("att", principal, number.key),
            now_ms - window_ms,
            cap,
            attempt_id,
            now_ms,
            window_ms,
        )
        return await self._facts_batch.submit(request)

    async def count_attempt(
        self,
        number: Number,
        principal: str,
        now: datetime,
        cap: int,
        window_days: int,
        attempt_id: str,
    ) -> tuple[bool, int]:
        """Count one attempt unless the cap is reached; return (counted, attempts now)."""
        facts = await self.facts(number, principal, now, window_days, (cap, attempt_id))
        return facts.reserved, facts.attempts_30d + facts.reserved

    async def release(self, number: Number, principal: str, attempt_id: str) -> None:
        """Give back a slot reserved by `facts` for a call the rules then denied."""
        await self._release_batch.submit((self._key("att", principal, number.key), attempt_id))

    def cancel_later(self, number: Number, principal: str, attempt_id: str) -> None:
        """Make sure a reservation that may still run in Redis is undone, retrying until
        Redis answers. Never blocks the caller."""
        if len(self._to_cancel) >= MAX_PENDING_CANCELS:
            oldest = next(iter(self._to_cancel))
            del self._to_cancel[oldest]
            log.error("cancel_dropped", attempt=oldest[1])
        self._to_cancel[(self._key("att", principal, number.key), attempt_id)] = time.monotonic()
        if self._canceller is None or self._canceller.done():
            self._canceller = asyncio.get_running_loop().create_task(self._cancel_pending())

    async def _cancel_pending(self) -> None:
        delay = 0.0
        while self._to_cancel:
            if delay:
                await asyncio.sleep(delay)
            horizon = time.monotonic() - _TOMBSTONE_MS / 1000
            for item in [i for i, since in self._to_cancel.items() if since < horizon]:
                del self._to_cancel[item]  # its tombstone would be gone by now anyway
            batch = list(self._to_cancel)[:MAX_BATCH]
            if not batch:
                return
            keys = [*(key for key, _ in batch), self._key("cancelled")]
            args: list[str | int] = [attempt_id for _, attempt_id in batch]
            args += (int(time.time() * 1000), _TOMBSTONE_MS)
            try:
                await self._cancel(keys=keys, args=args)
            except (RedisError, OSError) as exc:
                delay = min(max(delay * 2, 0.05), 30.0)
                log.warning("cancel_retry", pending=len(self._to_cancel), error=str(exc))
                continue
            delay = 0.0
            for item in batch:
                self._to_cancel.pop(item, None)

    async def _facts_many(self, requests: list[_FactsRequest]) -> list[Facts | Exception]:
        keys = [*self._shared_keys, *(request[2] for request in requests)]
        args: list[str | int] = [self._prefix]
        for number_key, pair, _, start, cap, attempt_id, now_ms, window_ms in requests:
            args += (number_key, pair, start, cap, attempt_id, now_ms, window_ms)
        try:
            reply = await self._facts(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        try:
            lists = self._metas.decode(reply[-2], reply[-1])
        except (ValueError, KeyError, TypeError) as exc:
            error = StoreUnavailable(f"undecodable list metadata in Redis: {exc}")
            return [error] * len(requests)
        return [
            _decode_facts(reply[i : i + _FACTS_PER_REQUEST], lists)
            for i in range(0, len(reply) - 2, _FACTS_PER_REQUEST)
        ]

    async def _release_many(self, requests: list[tuple[str, str]]) -> list[int | Exception]:
        try:
            await self._release(
                keys=[key for key, _ in requests], args=[member for _, member in requests]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        return [1] * len(requests)

    # --- live events ----------------------------------------------------------------------

    async def dnc_add(self, number: Number, reason: str, now: datetime) -> None:
        entry = _encode_dnc(reason, now)
        await self._write(lambda p: p.hset(self._key("dnc:live"), number.key, entry))

    async def dnc_remove(self, number: Number) -> bool:
        """Remove from the live list, the imported list in force, and the version an
        import under way is building."""
        return await self.lists.remove_dnc(self._key("dnc:live"), number.key)

    async def withdraw_consent(self, number: Number, principal: str, now: datetime) -> None:
        pair = self._pair(number, principal)
        await self._write(lambda p: p.hset(self._key("withdrawal"), pair, _ms(now)))

    async def record_refusal(self, number: Number, principal: str, now: datetime) -> None:
        """A refusal starts the block and withdraws consent, both or neither."""
        pair = self._pair(number, principal)

        def both(pipe: Any) -> None:
            pipe.hset(self._key("refusal"), pair, _ms(now))
            pipe.hset(self._key("withdrawal"), pair, _ms(now))

        await self._write(both)

    async def _write(self, build: Any) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                build(pipe)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None


def encode_consent(row: ConsentRow) -> tuple[str, str]:
    """The consent hash's field and value for a row (read back by _decode_consent)."""
    expires = _ms(row.expires_at) if row.expires_at else ""
    return f"{row.number.key}|{row.principal}", f"{_ms(row.given_at)}|{expires}|{row.proof_ref}"


def encode_contract(row: ContractRow) -> tuple[str, str]:
    """The contract hash's field and one item of its value (read by _decode_contracts)."""
    c = row.contract
    end = c.end.isoformat() if c.end else None
    item = [c.contract_id, c.sector.value, c.start.isoformat(), end]
    return f"{row.number.key}|{row.principal}", json.dumps(item, separators=(",", ":"))


def _encode_dnc(reason: str, now: datetime) -> str:
    return f"{_ms(now)}|{reason}"


@dataclass(frozen=True, slots=True)
class _ListsInForce:
    dnc_version: str
    optout_sets: Mapping[str, Mapping[str, Any]]  # version -> its metadata


class _Metas:
    """Decoded list metadata, kept while Redis sends back the same bytes (it changes
    only when an import swaps a list in)."""

    def __init__(self) -> None:
        self._raw: tuple[Any, Any] | None = None
        self._decoded = _ListsInForce("", {})

    def decode(self, dnc_version: Any, optout_meta: Any) -> _ListsInForce:
        raw = (dnc_version, optout_meta)
        if raw != self._raw:
            sets = json.loads(optout_meta) if optout_meta else []
            self._decoded = _ListsInForce(
                _text(dnc_version) if dnc_version else "",
                {str(entry["version"]): entry for entry in sets},
            )
            self._raw = raw
        return self._decoded


def _decode_facts(reply: Sequence[Any], lists: _ListsInForce) -> Facts | Exception:
    """Facts from the script's reply; an entry that does not decode (written by hand, or
    by another version) fails this one decision closed instead of crashing the session."""
    try:
        return _decode_entries(reply, lists)
    except (ValueError, OverflowError, KeyError, IndexError, TypeError) as exc:
        return StoreUnavailable(f"undecodable entry in Redis: {exc}")


def _decode_entries(reply: Sequence[Any], lists: _ListsInForce) -> Facts:
    dnc, optout, consent, withdrawal, contracts, refusal, attempts, reserved = reply
    return Facts(
        dnc=_decode_dnc(dnc, lists) if dnc else None,
        optout=_decode_optout(optout, lists) if optout else None,
        consent=_decode_consent(consent) if consent else None,
        withdrawn_at=_from_ms(withdrawal) if withdrawal else None,
        contracts=_decode_contracts(contracts) if contracts else (),
        refused_at=_from_ms(refusal) if refusal else None,
        attempts_30d=int(attempts),
        reserved=bool(reserved),
    )


def _decode_dnc(raw: bytes, lists: _ListsInForce) -> DncEntry:
    first, _, reason = _text(raw).partition("|")
    if first == "I":  # on the imported list
        return DncEntry(reason=reason or "imported", added_at=None, list_version=lists.dnc_version)
    return DncEntry(reason=reason, added_at=_from_ms(first) if first else None)


def _decode_optout(raw: bytes, lists: _ListsInForce) -> OptoutResult:
    version, _, status = _text(raw).partition("|")
    entry = lists.optout_sets[version]
    return OptoutResult(
        listed=status == "L",
        checked_on=date.fromisoformat(entry["checked_on"]),
        ref=entry.get("ref") or f"result set {version}",
    )


def _decode_consent(raw: bytes) -> Consent:
    given, expires, proof = _text(raw).split("|", 2)
    return Consent(
        given_at=_from_ms(given),
        expires_at=_from_ms(expires) if expires else None,
        proof_ref=proof,
    )


def _decode_contracts(raw: bytes) -> tuple[Contract, ...]:
    return tuple(
        Contract(
            contract_id=item[0],
            sector=Sector(item[1]),
            start=date.fromisoformat(item[2]),
            end=date.fromisoformat(item[3]) if item[3] else None,
        )
        for item in json.loads(raw)
    )
