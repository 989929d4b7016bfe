"""The answers kept for HTTP requests sent with an Idempotency-Key (dialguard.api.idempotency
decides what they hold and for how long).

In Redis rather than the journal or the process: every worker and every node of a call
centre shares it (a client's retry may reach another worker, or another node behind a load
balancer), it outlives a restart of the service, and it forgets each answer by itself when
its time is up. The journal stays the record of what was done; a reply is only what was
said.
"""

from __future__ import annotations

import re

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dialguard.store.errors import StoreUnavailable
from dialguard.store.keys import Keys

__all__ = ["Replies"]

# Take the key for a request about to run, or return what it holds: one round trip, so
# that two requests with the same key never both run. KEYS: the reply key. ARGV: the
# value that marks it taken, its lifetime in ms. (SET NX GET would do, from Redis 7.0.)
_CLAIM = """
local old = redis.call('GET', KEYS[1])
if old then
  return old
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

_DIGEST = re.compile(r"[0-9a-f]{64}")


class Replies:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._claim = client.register_script(_CLAIM)

    def _key(self, digest: str) -> str:
        if not _DIGEST.fullmatch(digest):  # nothing unchecked ever goes into a key
            raise ValueError(f"not a SHA-256 digest: {digest[:80]!r}")
        return self._keys.reply(digest)

    async def claim(self, digest: str, taken: bytes, ttl_ms: int) -> bytes | None:
        """Mark `digest` taken (`taken`, for `ttl_ms`) and return None, or return what it
        holds already and change nothing."""
        try:
            old = await self._claim(keys=[self._key(digest)], args=[taken, ttl_ms])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
        return bytes(old) if old is not None else None

    async def keep(self, digest: str, answer: bytes, ttl_ms: int) -> None:
        """Replace the mark by the answer, kept `ttl_ms`."""
        try:
            await self._redis.set(self._key(digest), answer, px=ttl_ms)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None

    async def forget(self, digest: str) -> None:
        """Free the key: the request it was taken for wrote nothing and may be sent again."""
        try:
            await self._redis.delete(self._key(digest))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from None
