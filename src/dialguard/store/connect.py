"""The one way from `[redis]` settings to a client: one server by its URL, or the primary
Redis Sentinel names, followed across failovers by redis-py's Sentinel support.

With Sentinel, each new connection first asks the sentinels where the primary is (one
round trip to a sentinel, under the same timeouts); a connection to a primary that died or
was demoted fails, and the next one goes to the primary the sentinels name then. Nothing
here retries: a decision has a deadline and its campaign's fail mode, and a live change
waits in dialguard.pending, which retries it.
"""

from __future__ import annotations

import re
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from dialguard.config import RedisSettings

__all__ = ["MAX_CONNECTIONS", "client_for", "close_client"]

# redis-py's default pool caps at 100 connections and then raises; a busy FastAGI node
# runs hundreds of sessions at once.
MAX_CONNECTIONS = 2048


def client_for(settings: RedisSettings, timeout_ms: int | None = None) -> aioredis.Redis:
    """A client for `settings`; `timeout_ms` overrides the configured timeout (the CLI's
    bulk commands). Close it with close_client."""
    timeout = (timeout_ms or settings.timeout_ms) / 1000
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # A retried call would outlive the decision's deadline: fail at once instead.
        "retry": Retry(NoBackoff(), 0),
    }
    tls = _tls(settings)
    credentials: dict[str, Any] = {}
    if settings.password is not None:
        credentials["password"] = settings.password
    if not settings.sentinels:
        return aioredis.Redis.from_url(
            settings.url, max_connections=MAX_CONNECTIONS, **common, **tls, **credentials
        )
    if settings.username is not None:
        credentials["username"] = settings.username
    # The sentinels are asked under the same timeouts and TLS as the primary, with their
    # own password when they have one (Sentinel's `requirepass`; no ACL user).
    asking: dict[str, Any] = {**common, **tls}
    if settings.sentinel_password is not None:
        asking["password"] = settings.sentinel_password
    sentinel = _Sentinel(settings.sentinels, sentinel_kwargs=asking)
    client: aioredis.Redis = sentinel.master_for(
        settings.service_name,
        db=settings.db,
        max_connections=MAX_CONNECTIONS,
        **common,
        **tls,
        **credentials,
    )
    return client


async def close_client(client: aioredis.Redis) -> None:
    """Close the client and, with Sentinel, its connections to the sentinels."""
    pool = client.connection_pool
    await client.aclose()
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()


class _Sentinel(Sentinel):
    async def discover_master(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError as exc:
            raise MasterNotFoundError(_briefly(service_name, str(exc))) from None


_ADDRESS = re.compile(r"host=([^,>]+),port=(\d+)")
_REFUSED_AUTH = ("AuthenticationError", "NOAUTH", "WRONGPASS", "invalid password")


def _briefly(service_name: str, said: str) -> str:
    """redis-py's message names each sentinel by its client's repr (a thousand characters
    each, into every degraded decision's audit record): one line instead, which says
    what to do when the sentinels want a password."""
    asked = ", ".join(dict.fromkeys(f"{host}:{port}" for host, port in _ADDRESS.findall(said)))
    line = f"the sentinels ({asked or 'none answered'}) name no primary {service_name!r}"
    if any(word in said for word in _REFUSED_AUTH):
        line += (
            ": a sentinel refused us without the right password (its requirepass:"
            " sentinel_password_file or DIALGUARD_REDIS_SENTINEL_PASSWORD)"
        )
    return line


def _tls(settings: RedisSettings) -> dict[str, Any]:
    if not settings.tls:
        return {}
    # A rediss:// URL turns TLS on by itself; Sentinel's connections are told.
    options: dict[str, Any] = {"ssl": True} if settings.sentinels else {}
    if settings.tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_ca_file)
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        options["ssl_certfile"] = str(settings.tls_cert_file)
        options["ssl_keyfile"] = str(settings.tls_key_file)
    return options
