"""The one seam below redis-py's command API (store/wire.py), against a real Redis: it is
what a ten-million-number import writes through."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from dialguard.model import Facts
from dialguard.store import StoreUnavailable
from dialguard.store.facts import Batcher
from dialguard.store.resp import bulk, evalsha
from dialguard.store.wire import pipelined

SCRIPT = "return #ARGV"


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


async def test_commands_sent_as_bytes_answer_in_order(redis_client: aioredis.Redis) -> None:
    commands = [command(b"INCRBY", b"counter", str(i).encode()) for i in range(1, 8)]
    replies = await pipelined(redis_client, iter(commands), in_flight=2)
    assert replies == [1, 3, 6, 10, 15, 21, 28]
    assert await redis_client.get("counter") == b"28"


async def test_evalsha_carries_pre_encoded_arguments(redis_client: aioredis.Redis) -> None:
    sha = await redis_client.script_load(SCRIPT)
    encoded = b"".join(bulk(str(i).encode()) for i in range(5))
    (reply,) = await pipelined(redis_client, [evalsha(sha, (b"head",), 5, encoded)])
    assert reply == 6  # the head argument and the five encoded ones


async def test_an_error_reply_raises_and_leaves_the_pool_usable(
    redis_client: aioredis.Redis,
) -> None:
    bad = [command(b"SET", b"k", b"v"), command(b"NO-SUCH-COMMAND"), command(b"PING")]
    with pytest.raises(ResponseError):
        await pipelined(redis_client, bad, in_flight=3)
    assert await redis_client.ping()  # the connection that failed was dropped, not reused


async def test_a_reply_of_the_wrong_length_fails_every_waiter_at_once() -> None:
    async def short(requests: list[int]) -> list[Facts | Exception]:
        return [Facts()] * (len(requests) - 1)

    batcher: Batcher[int, Facts] = Batcher(short)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True), 1.0
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)


async def test_drain_sends_what_lingers() -> None:
    sent: list[list[int]] = []

    async def send(requests: list[int]) -> list[int | Exception]:
        sent.append(requests)
        return list(requests)

    batcher: Batcher[int, int] = Batcher(send, linger_s=60.0)
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await batcher.drain(1.0)
    assert sent == [[0, 1, 2]] and [w.result() for w in waiting] == [0, 1, 2]


async def test_a_request_past_its_timeout_fails_alone_and_the_next_batch_goes_out() -> None:
    release = asyncio.Event()
    sent: list[list[int]] = []

    async def send(requests: list[int]) -> list[int | Exception]:
        sent.append(requests)
        if requests == [0]:
            await release.wait()  # Redis frozen on the first call
        return [r * 10 for r in requests]

    batcher: Batcher[int, int] = Batcher(send)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):  # its own, not the guard's (see the time taken)
        await asyncio.wait_for(batcher.submit(0, timeout_s=0.05), 2.0)
    assert 0.04 <= loop.time() - started < 0.5
    patient = asyncio.ensure_future(batcher.submit(1, timeout_s=5.0))
    untimed = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    release.set()  # the late answer to 0 is dropped; 1 and 2 leave together after it
    assert list(await asyncio.wait_for(asyncio.gather(patient, untimed), 1.0)) == [10, 20]
    assert sent == [[0], [1, 2]]


def test_a_facts_reply_of_the_wrong_shape_fails_its_batch_closed() -> None:
    from dialguard.store.facts import FACTS_PER_REQUEST, Metas, decode_batch

    right = [None] * (2 * FACTS_PER_REQUEST) + [None, None]
    for reply in (right[:-1], [*right, None], b"OK", None):
        results = decode_batch(reply, 2, Metas())
        assert len(results) == 2 and all(isinstance(r, StoreUnavailable) for r in results)
