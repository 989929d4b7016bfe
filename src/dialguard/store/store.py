"""The service's side of Redis: the facts of each decision (with the attempt it may
count), giving slots back, and the live changes made during the day.

Layout: docs/data-model.md; key names: dialguard.store.keys; the facts script and its
batching: dialguard.store.facts; the imported lists: dialguard.store.lists.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError

from dialguard.changes import Change, ChangeKind
from dialguard.config import RedisSettings
from dialguard.model import Facts
from dialguard.numbers import Number
from dialguard.store.bulk import BulkFacts
from dialguard.store.connect import client_for, close_client
from dialguard.store.errors import StoreUnavailable
from dialguard.store.facts import (
    FACTS,
    MAX_BATCH,
    SHARED_KEYS,
    Batcher,
    FactsRequest,
    Metas,
    decode_batch,
    encode_dnc,
    encode_live_consent,
    facts_formats,
    ms,
)
from dialguard.store.keys import Keys
from dialguard.store.lists import Lists
from dialguard.store.replies import Replies
from dialguard.store.resp import bulk, evalsha
from dialguard.store.wire import pipelined
from dialguard.telemetry import Telemetry

__all__ = ["APPLIED_KEPT_DAYS", "MAX_PENDING_CANCELS", "RELEASE_LINGER_S", "Store"]

log = structlog.get_logger("dialguard.store")

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

# Journalled changes (dialguard.changes), each applied at most once: a change whose id is
# marked applied changes nothing, whoever applies it again (another worker, apply-pending,
# a restart that could not read the marks). Each also keeps the latest instant it holds,
# so changes applied out of order end as if applied in order. The mark is scored with the
# applier's clock (marks are kept APPLIED_KEPT_DAYS after they were last applied, whatever
# instant a change claims). Applying a change again moves its mark to now: a write of this
# connection, which a WAIT after it can count (Store.apply: the replica that acknowledges
# it has everything written before, the first application included).
#
# A withdrawal or a refusal: KEYS: the hashes to set, then the applied marks. ARGV: the
# field, the change's ms, its id, now and the oldest mark to keep (applier's ms).
_LATEST = """
local applied = KEYS[#KEYS]
if redis.call('ZSCORE', applied, ARGV[3]) then
  redis.call('ZADD', applied, ARGV[4], ARGV[3])
  return 0
end
for i = 1, #KEYS - 1 do
  local old = redis.call('HGET', KEYS[i], ARGV[1])
  if not old or tonumber(old) < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[i], ARGV[1], ARGV[2])
  end
end
redis.call('ZADD', applied, ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYSCORE', applied, '-inf', '(' .. ARGV[5])
return 1
"""
# A do-not-call: the live entry keeps the latest request (its value starts with its ms).
# KEYS: the live hash, the applied marks. ARGV: the number, the entry, the change's ms,
# its id, now and the oldest mark to keep.
_ADD_DNC = """
if redis.call('ZSCORE', KEYS[2], ARGV[4]) then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  return 0
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local added = old and tonumber(string.match(old, '^(%d+)|'))
if not added or added <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[6])
return 1
"""
# A consent added live: the pair keeps the consent given last (its value starts with its
# given-at ms; two given at the same instant: the greater value, so that the order they
# are applied in never matters). KEYS: the live consents, the applied marks. ARGV: the
# pair, the value, its given-at ms, the change's id, now and the oldest mark to keep.
_ADD_CONSENT = """
if redis.call('ZSCORE', KEYS[2], ARGV[4]) then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  return 0
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local given = old and tonumber(string.match(old, '^(-?%d+)|'))
local changed = 0
if not given or given < tonumber(ARGV[3]) or (given == tonumber(ARGV[3]) and old < ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  changed = 1
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[6])
return changed
"""
# A contract added or ended live. The pair's value is a JSON object: contract id ->
# [sector, start, end, add ms, last day, end ms] (strings; '0': none). An add replaces the
# add part if recorded later than the one kept, an end the end part: either order of
# application ends the same (store.facts.merge_contracts reads the two parts together).
# KEYS: the live contracts, the applied marks. ARGV: the pair, the contract id, 'add' or
# 'end', the sector, start, end (add) or the last day (end), the change's ms, its id, now
# and the oldest mark to keep.
_CONTRACT = """
if redis.call('ZSCORE', KEYS[2], ARGV[8]) then
  redis.call('ZADD', KEYS[2], ARGV[9], ARGV[8])
  return 0
end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local all = raw and cjson.decode(raw) or {}
local item = all[ARGV[2]] or {'', '', '', '0', '', '0'}
local at = tonumber(ARGV[7])
local changed = 0
if ARGV[3] == 'add' and tonumber(item[4]) <= at then
  item[1], item[2], item[3], item[4] = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  changed = 1
elseif ARGV[3] == 'end' and tonumber(item[6]) <= at then
  item[5], item[6] = ARGV[6], ARGV[7]
  changed = 1
end
all[ARGV[2]] = item
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(all))
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[10])
return changed
"""
# A principal's own do-not-call taken off (the removal of a `_ADD_DNC` made with a
# principal), unless the entry is newer than the removal. KEYS: the principals' hash, the
# applied marks. ARGV: the number|principal field, the change's ms, its id, now and the
# oldest mark to keep.
_REMOVE_PRINCIPAL_DNC = """
if redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  return 0
end
local entry = redis.call('HGET', KEYS[1], ARGV[1])
local added = entry and tonumber(string.match(entry, '^(%d+)|'))
local removed = 0
if entry and not (added and added > tonumber(ARGV[2])) then
  removed = redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
return removed
"""
# Applied marks outlive any pending change the service looks for (PENDING_DAYS).
APPLIED_KEPT_DAYS = 35

# How long released slots wait to go out together. Meanwhile the slot still counts: a
# concurrent call to the same number could be denied FREQUENCY_CAP (never let through).
RELEASE_LINGER_S = 0.05
# At shutdown, how long slot releases still waiting may take to go out.
CLOSE_WAIT_S = 1.0


class Store:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        telemetry: Telemetry | None = None,
        *,
        replicas_ack: int = 0,
        ack_ms: int = 100,
    ) -> None:
        self._redis = client
        self.telemetry = telemetry  # None: nothing timed or counted (no metrics endpoint)
        self._replicas_ack = replicas_ack  # see apply
        self._ack_ms = ack_ms
        self.keys = Keys(prefix)
        self._facts = client.register_script(FACTS)
        self._release = client.register_script(_RELEASE)
        self._cancel = client.register_script(_CANCEL)
        self._latest = client.register_script(_LATEST)
        self._add_dnc = client.register_script(_ADD_DNC)
        self._add_consent = client.register_script(_ADD_CONSENT)
        self._contract = client.register_script(_CONTRACT)
        self._remove_principal_dnc = client.register_script(_REMOVE_PRINCIPAL_DNC)
        self._to_cancel: dict[tuple[str, str], float] = {}  # (attempts key, id) -> since
        self._canceller: asyncio.Task[None] | None = None
        self.lists = Lists(client, self.keys)
        self.replies = Replies(client, self.keys)
        keys = self.keys
        self._shared_keys = [keys.index, keys.dnc_live, keys.withdrawal, keys.refusal]
        self._shared_keys += (keys.cancelled, keys.consent_live, keys.contract_live)
        self._shared_keys += (keys.principals, keys.dnc_principal)
        assert len(self._shared_keys) == SHARED_KEYS
        # Many numbers at once, read only (a scrub).
        self.bulk = BulkFacts(client, keys)
        self._formats: list[str | int] = list(facts_formats(keys))
        # The facts call in Redis's wire format: what every call shares, encoded once.
        self._facts_shared = b"".join(bulk(key.encode()) for key in self._shared_keys)
        self._facts_formats = b"".join(bulk(str(f).encode()) for f in self._formats)
        self._metas = Metas()
        self._facts_batch: Batcher[FactsRequest, Facts] = Batcher(self._facts_many)
        # Nobody waits for a release: gathering them for a while makes them nearly free.
        self._release_batch: Batcher[tuple[str, str], int] = Batcher(
            self._release_many, linger_s=RELEASE_LINGER_S
        )

    @classmethod
    def from_settings(
        cls,
        settings: RedisSettings,
        timeout_ms: int | None = None,
        telemetry: Telemetry | None = None,
    ) -> Store:
        """The store `[redis]` describes (a URL or Sentinel); `timeout_ms` overrides the
        configured timeout (bulk commands)."""
        timeout_ms = timeout_ms or settings.timeout_ms
        client = client_for(settings, timeout_ms)
        # WAIT blocks in Redis up to its timeout: keep it inside the socket's.
        ack_ms = max(timeout_ms // 2, 1)
        return cls(
            client,
            settings.prefix,
            telemetry,
            replicas_ack=settings.replicas_ack,
            ack_ms=ack_ms,
        )

    @classmethod
    def from_url(
        cls, url: str, prefix: str, timeout_ms: int, telemetry: Telemetry | None = None
    ) -> Store:
        """One Redis server by its URL (tests and benchmarks; the service uses
        from_settings)."""
        return cls.from_settings(RedisSettings(url, prefix, timeout_ms), telemetry=telemetry)

    async def close(self) -> None:
        """Send what still waits (slot releases, cancellations) for a moment, then close."""
        await self._release_batch.drain(CLOSE_WAIT_S)
        if self._canceller is not None and self._to_cancel:
            await asyncio.wait({self._canceller}, timeout=CLOSE_WAIT_S)  # one last try
        if self._canceller is not None:
            self._canceller.cancel()
        await close_client(self._redis)

    @property
    def pending_cancels(self) -> int:
        """Reservations still to be undone once Redis answers (see cancel_later)."""
        return len(self._to_cancel)

    async def live_dnc_census(self) -> tuple[int, int]:
        """(entries, bytes) of the live do-not-call entries."""
        return await self.lists.hash_census(self.keys.dnc_live)

    async def live_census(self, kind: str) -> tuple[int, int]:
        """(entries, bytes) of what was added live to `kind` (dnc, consent, contract)."""
        key = {
            "dnc": self.keys.dnc_live,
            "consent": self.keys.consent_live,
            "contract": self.keys.contract_live,
        }[kind]
        return await self.lists.hash_census(key)

    async def principal_dnc_census(self) -> tuple[int, int]:
        """(entries, bytes) of the principals' own do-not-call entries."""
        return await self.lists.hash_census(self.keys.dnc_principal)

    @staticmethod
    def _pair(number: Number, principal: str) -> str:
        return f"{number.key}|{principal}"

    async def ping(self) -> None:
        started = time.perf_counter()
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._timed("ping", started, failed=True)
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        self._timed("ping", started)

    def _timed(self, op: str, started: float, *, failed: bool = False) -> None:
        if self.telemetry is not None:
            self.telemetry.redis_call(op, time.perf_counter() - started, failed=failed)

    # --- the hot path ---------------------------------------------------------------------

    async def facts(
        self,
        number: Number,
        principal: str,
        now: datetime,
        window_days: int,
        reserve: tuple[int, str] | None = None,
        timeout_s: float | None = None,
    ) -> Facts:
        """What the store knows about `number` for `principal`, in one round trip.

        With `reserve=(cap, attempt_id)`, also count this attempt if fewer than `cap` were
        made in the window (Facts.reserved says whether it was); Facts.attempts_30d is the
        count before this attempt either way. TimeoutError without an answer within
        `timeout_s` (the call may still count the attempt: see Store.cancel_later).
        """
        window_ms = window_days * 86_400_000
        now_ms = ms(now)
        cap, attempt_id = reserve if reserve is not None else (0, "")
        request = (
            number.key,
            self._pair(number, principal),
            self.keys.attempts(principal, number.key),
            now_ms - window_ms,
            cap,
            attempt_id,
            now_ms,
            window_ms,
        )
        return await self._facts_batch.submit(request, timeout_s)

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
        await self._release_batch.submit((self.keys.attempts(principal, number.key), attempt_id))

    def cancel_later(self, number: Number, principal: str, attempt_id: str) -> None:
        """Make sure a reservation that may still run in Redis is undone, retrying until
        Redis answers. Never blocks the caller."""
        if len(self._to_cancel) >= MAX_PENDING_CANCELS:
            oldest = next(iter(self._to_cancel))
            del self._to_cancel[oldest]
            log.error("cancel_dropped", attempt=oldest[1])
        self._to_cancel[(self.keys.attempts(principal, number.key), attempt_id)] = time.monotonic()
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
            keys = [*(key for key, _ in batch), self.keys.cancelled]
            args: list[str | int] = [attempt_id for _, attempt_id in batch]
            args += (int(time.time() * 1000), _TOMBSTONE_MS)
            started = time.perf_counter()
            try:
                await self._cancel(keys=keys, args=args)
            except (RedisError, OSError) as exc:
                self._timed("cancel", started, failed=True)
                delay = min(max(delay * 2, 0.05), 30.0)
                log.warning("cancel_retry", pending=len(self._to_cancel), error=str(exc))
                continue
            self._timed("cancel", started)
            delay = 0.0
            for item in batch:
                self._to_cancel.pop(item, None)

    async def _facts_many(self, requests: list[FactsRequest]) -> list[Facts | Exception]:
        command = self._facts_command(requests)
        started = time.perf_counter()
        try:
            try:
                (reply,) = await pipelined(self._redis, (command,), in_flight=1)
            except NoScriptError:  # a Redis restarted, or failed over: its script cache empty
                await self._redis.script_load(FACTS)
                (reply,) = await pipelined(self._redis, (command,), in_flight=1)
        except (RedisError, OSError) as exc:
            self._timed("facts", started, failed=True)
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        self._timed("facts", started)
        return decode_batch(reply, len(requests), self._metas)

    def _facts_command(self, requests: list[FactsRequest]) -> bytes:
        """EVALSHA of the facts script for `requests`, as bytes: redis-py's command path
        (an encoder call per argument, retries, events) cost ~25 µs more per call, paid
        by every decision of a quiet node (docs/benchmarks.md)."""
        parts = [self._facts_shared]
        parts += [bulk(request[2].encode()) for request in requests]  # the attempts keys
        parts.append(self._facts_formats)
        for number_key, pair, _, start, cap, attempt_id, now_ms, window_ms in requests:
            parts += (bulk(number_key.encode()), bulk(pair.encode()), bulk(b"%d" % start))
            parts += (bulk(b"%d" % cap), bulk(attempt_id.encode()), bulk(b"%d" % now_ms))
            parts.append(bulk(b"%d" % window_ms))
        keys = SHARED_KEYS + len(requests)
        count = keys + len(self._formats) + 7 * len(requests)
        return evalsha(self._facts.sha, (), count, b"".join(parts), keys=keys)

    async def _release_many(self, requests: list[tuple[str, str]]) -> list[int | Exception]:
        started = time.perf_counter()
        try:
            await self._release(
                keys=[key for key, _ in requests], args=[member for _, member in requests]
            )
        except (RedisError, OSError) as exc:
            self._timed("release", started, failed=True)
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        self._timed("release", started)
        return [1] * len(requests)

    # --- live events ----------------------------------------------------------------------

    async def dnc_add(self, number: Number, reason: str, now: datetime) -> None:
        entry = encode_dnc(reason, now)
        await self._write(lambda p: p.hset(self.keys.dnc_live, number.key, entry))

    async def dnc_remove(self, number: Number) -> bool:
        """Remove from the live list, the imported list in force, and the version an
        import under way is building."""
        return await self.lists.remove_dnc(number.key)

    async def withdraw_consent(self, number: Number, principal: str, now: datetime) -> None:
        pair = self._pair(number, principal)
        await self._write(lambda p: p.hset(self.keys.withdrawal, pair, ms(now)))

    async def record_refusal(self, number: Number, principal: str, now: datetime) -> None:
        """A refusal starts the block and withdraws consent, both or neither."""
        pair = self._pair(number, principal)

        def both(pipe: Any) -> None:
            pipe.hset(self.keys.refusal, pair, ms(now))
            pipe.hset(self.keys.withdrawal, pair, ms(now))

        await self._write(both)

    # --- journalled changes (dialguard.changes) -------------------------------------------

    async def apply(self, change: Change) -> bool:
        """Apply one change from the journal and mark it applied, in one atomic step;
        whether it changed anything (False: applied before, or a removal of a number not
        listed). Applying it again changes nothing.

        With `replicas_ack` (Sentinel), the change is taken only once that many replicas
        have it as well: replication is asynchronous, and a primary that dies before
        passing a change on is replaced by a replica without it. Until then this raises
        StoreUnavailable and the change stays pending (dialguard.pending), counted in
        decisions and applied again (which changes nothing) until a replica acknowledges
        it."""
        started = time.perf_counter()
        try:
            applied = await self._apply_acknowledged(change)
        except StoreUnavailable:
            self._timed("apply", started, failed=True)
            raise
        self._timed("apply", started)
        return applied

    async def _apply_acknowledged(self, change: Change) -> bool:
        if not self._replicas_ack:
            return await self._apply(change, self._redis)
        # WAIT counts the writes of the connection it is sent on: the same one.
        connection = self._redis.client()
        try:
            changed = await self._apply(change, connection)
            try:
                acked = int(await connection.wait(self._replicas_ack, self._ack_ms))
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        finally:
            await connection.aclose()
        if acked < self._replicas_ack:
            raise StoreUnavailable(
                f"change {change.id} reached {acked} of the {self._replicas_ack} replica(s)"
                f" it needs (replicas_ack) within {self._ack_ms} ms"
            )
        return changed

    async def _apply(self, change: Change, client: aioredis.Redis) -> bool:
        keys = self.keys
        now_ms = int(time.time() * 1000)
        oldest = now_ms - APPLIED_KEPT_DAYS * 86_400_000
        # A principal's own do-not-call lives beside the company's list, never in it.
        scope = change.dnc_scope
        scoped = f"{change.number_key}|{scope}"
        try:
            if change.kind is ChangeKind.DNC_REMOVE and scope:
                args: list[str | int] = [scoped, change.ts_ms, change.id, now_ms, oldest]
                removed = await self._remove_principal_dnc(
                    keys=[keys.dnc_principal, keys.applied], args=args, client=client
                )
                return bool(removed)
            if change.kind is ChangeKind.DNC_REMOVE:
                mark = (change.id, change.ts_ms, now_ms, oldest)
                return await self.lists.remove_dnc(change.number_key, mark, client)
            if change.adds_dnc:
                entry = f"{change.ts_ms}|{change.why}"
                args = [
                    scoped if scope else change.number_key,
                    entry,
                    change.ts_ms,
                    change.id,
                    now_ms,
                    oldest,
                ]
                where = keys.dnc_principal if scope else keys.dnc_live
                added = await self._add_dnc(keys=[where, keys.applied], args=args, client=client)
                return bool(added)
            pair = f"{change.number_key}|{change.principal}"
            if change.withdraws:
                hashes = [keys.refusal, keys.withdrawal] if change.refuses else [keys.withdrawal]
                args = [pair, change.ts_ms, change.id, now_ms, oldest]
                latest = await self._latest(keys=[*hashes, keys.applied], args=args, client=client)
                return bool(latest)
            if change.kind is ChangeKind.CONSENT_ADD:
                value = encode_live_consent(change.given_ms, change.expires_ms, change.proof_ref)
                args = [pair, value, change.given_ms, change.id, now_ms, oldest]
                added = await self._add_consent(
                    keys=[keys.consent_live, keys.applied], args=args, client=client
                )
                return bool(added)
            if change.kind in (ChangeKind.CONTRACT_ADD, ChangeKind.CONTRACT_END):
                adds = change.kind is ChangeKind.CONTRACT_ADD
                args = [
                    pair,
                    change.contract_id,
                    "add" if adds else "end",
                    change.sector,
                    change.start,
                    change.end,
                    change.ts_ms,
                    change.id,
                    now_ms,
                    oldest,
                ]
                kept = await self._contract(
                    keys=[keys.contract_live, keys.applied], args=args, client=client
                )
                return bool(kept)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        raise ValueError(f"change {change.id}: nothing to apply for {change.kind}")

    async def applied(self, ids: list[str]) -> set[str]:
        """Which of these change ids Redis has taken."""
        if not ids:
            return set()
        started = time.perf_counter()
        try:
            scores = await self._redis.zmscore(self.keys.applied, ids)
        except (RedisError, OSError) as exc:
            self._timed("applied", started, failed=True)
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        self._timed("applied", started)
        return {i for i, score in zip(ids, scores, strict=True) if score is not None}

    async def _write(self, build: Callable[[Any], Any]) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                build(pipe)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
