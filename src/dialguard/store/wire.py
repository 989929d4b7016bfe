"""Commands already in Redis's wire format, sent on one connection with a few in flight.

The one place that goes below redis-py's command API: a ten-million-number import sends
its offsets pre-encoded (redis-py encoding each argument cost more than parsing the file),
and every decision's facts call goes this way (redis-py's command path cost ~25 µs of CPU
more per call, a quiet node's decisions each paying it: docs/benchmarks.md). It uses
`ConnectionPool.get_connection`, `send_packed_command` and `read_response`, public methods
of redis-py's asyncio connections whose signatures moved between major versions;
pyproject.toml pins the major version CI tests, and tests/test_wire.py holds this seam to
it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis

__all__ = ["pipelined", "pipelined_batches"]

T = TypeVar("T")


async def pipelined(
    client: aioredis.Redis, commands: Iterable[bytes], in_flight: int = 2
) -> list[Any]:
    """Send each command as it is built, at most `in_flight` unanswered; their replies in
    order. An error reply raises (redis-py's ResponseError) after the connection is
    dropped: replies of the commands behind it may still be on their way."""
    pool: Any = client.connection_pool  # get_connection is untyped in redis-py
    connection: Any = await pool.get_connection()
    replies: list[Any] = []
    waiting = 0
    try:
        for command in commands:
            await connection.send_packed_command(command)
            waiting += 1
            if waiting == in_flight:
                replies.append(await connection.read_response())
                waiting -= 1
        while waiting:
            replies.append(await connection.read_response())
            waiting -= 1
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    return replies


async def pipelined_batches(
    client: aioredis.Redis, batches: Iterable[tuple[T, bytes, int]], in_flight: int = 2
) -> list[tuple[T, list[Any]]]:
    """As `pipelined`, each item (a tag, its commands, how many) several commands sent at
    once: each tag with the replies of its commands, in order. An error reply raises, as
    `pipelined`."""
    pool: Any = client.connection_pool
    connection: Any = await pool.get_connection()
    replies: list[tuple[T, list[Any]]] = []
    waiting: deque[tuple[T, int]] = deque()

    async def read() -> None:
        tag, count = waiting.popleft()
        replies.append((tag, [await connection.read_response() for _ in range(count)]))

    try:
        for tag, commands, count in batches:
            await connection.send_packed_command(commands)
            waiting.append((tag, count))
            if len(waiting) == in_flight:
                await read()
        while waiting:
            await read()
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    return replies
