"""The facts of many numbers at once, read only: a lead file scrubbed before a campaign.

The decision's own script (store.facts.FACTS) reads them, so a scrub sees what a call
would: the lists in force, whole, the live entries, the attempts in the window. No slot is
reserved (a cap of 0: the script then only counts, ZCOUNT) and nothing is written.

A million numbers must be read in seconds. The requests go pre-encoded (RESP: redis-py
encoding eight arguments a number cost more than the rest of the scrub), MAX_BATCH to a
script call, and several calls are in flight on one connection: Redis runs one while the
client decides the numbers of the one before. A call is kept as short as a busy node's own
(MAX_BATCH numbers: a few milliseconds of Redis), so a scrub run beside `serve` delays its
decisions by at most that much at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Iterable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dialguard.store.errors import StoreUnavailable
from dialguard.store.facts import (
    FACTS,
    FACTS_ARGUMENTS,
    FACTS_PER_REQUEST,
    MAX_BATCH,
    ListsInForce,
    Metas,
    facts_formats,
    ms,
    shared_keys,
)
from dialguard.store.keys import Keys
from dialguard.store.resp import bulk

__all__ = ["IN_FLIGHT", "MAX_BATCH", "BulkFacts", "Scanned"]

# Script calls sent ahead of the one being read: enough that Redis always has one to run
# while the client decides the batch before (each call holds a few milliseconds of work).
IN_FLIGHT = 4

T = TypeVar("T")


class Scanned(Generic[T]):
    """One batch's answer: the caller's payload, the script's reply (FACTS_PER_REQUEST
    entries per number, in order) and the lists in force it read."""

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
    ) -> AsyncGenerator[Scanned[T], None]:
        """The facts for `principal` at `now` of each batch of (number key, window in
        days), at most MAX_BATCH a batch, in the order of `batches` (an empty batch comes
        back in its turn without a call). StoreUnavailable when Redis fails."""
        keys = self._keys
        now_ms = ms(now)
        try:
            sha = await self._redis.script_load(FACTS)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        sha_bytes = sha.encode() if isinstance(sha, str) else bytes(sha)
        head_keys = shared_keys(keys)
        formats = facts_formats(keys)
        shared = b"".join(bulk(key.encode()) for key in head_keys)
        encoded_formats = b"".join(bulk(f.encode()) for f in formats)
        # Every request: one attempts key, and FACTS_ARGUMENTS arguments (store.facts).
        fixed = 3 + len(head_keys) + len(formats)
        attempts_prefix = keys.attempts_prefix(principal).encode()
        pair_suffix = b"|" + principal.encode()
        tails: dict[int, bytes] = {}  # window days -> the arguments after the number's two

        def command(requests: Sequence[tuple[str, int]]) -> bytes:
            if len(requests) > MAX_BATCH:
                raise ValueError(f"at most {MAX_BATCH} numbers a batch")
            attempt_keys = []
            arguments = []
            for number_key, window_days in requests:
                tail = tails.get(window_days)
                if tail is None:
                    window_ms = window_days * 86_400_000
                    # start of the window, cap 0 (count only), no attempt id, now, window
                    values = (now_ms - window_ms, 0, "", now_ms, window_ms)
                    tail = tails[window_days] = b"".join(bulk(str(v).encode()) for v in values)
                key = number_key.encode()
                size = len(key)
                attempt_keys.append(
                    b"$%d\r\n%b%b\r\n" % (len(attempts_prefix) + size, attempts_prefix, key)
                )
                # the number's key, its number|principal field, then the tail
                arguments.append(
                    b"$%d\r\n%b\r\n$%d\r\n%b%b\r\n%b"
                    % (size, key, size + len(pair_suffix), key, pair_suffix, tail)
                )
            count = len(requests)
            return b"".join(
                (
                    b"*%d\r\n" % (fixed + count * (1 + FACTS_ARGUMENTS)),
                    bulk(b"EVALSHA"),
                    bulk(sha_bytes),
                    bulk(b"%d" % (len(head_keys) + count)),
                    shared,
                    *attempt_keys,
                    encoded_formats,
                    *arguments,
                )
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
        if not isinstance(reply, list) or len(reply) != count * FACTS_PER_REQUEST + 2:
            size = len(reply) if isinstance(reply, list) else type(reply).__name__
            raise StoreUnavailable(f"unexpected facts reply from Redis ({size})")
        try:
            lists = self._metas.decode(reply[-2], reply[-1])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"undecodable list metadata in Redis: {exc}") from None
        del reply[-2:]
        return Scanned(payload, reply, lists), lists

    async def attempt_times(
        self, principal: str, number_keys: Sequence[str], now: datetime, window_days: int
    ) -> list[list[int]]:
        """The instants (ms) of the attempts counted in the window before `now`, for each
        number, as the facts script counts them (after the window's start, any later)."""
        if not number_keys:
            return []
        start = f"({ms(now) - window_days * 86_400_000}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for number_key in number_keys:
                    key = self._keys.attempts(principal, number_key)
                    pipe.zrangebyscore(key, start, "+inf", withscores=True)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        return [sorted(int(score) for _, score in reply) for reply in replies]
