from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from tests.redis_server import RedisServer, running_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> RedisServer:
    """The session's Redis, emptied: what an earlier test left there must not answer for
    this one. Sync, so that sync tests (the CLI, the classic AGI script) can have it too."""
    with redis.Redis.from_url(redis_server.admin_url) as client:
        client.flushall()
    return redis_server


@pytest.fixture
async def redis_client(clean_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(clean_redis.admin_url)
    yield client
    await client.aclose()
