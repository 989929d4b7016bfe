"""replicas_ack: a live change counts as taken only once a replica has it too, so that a
failover (which promotes a replica) cannot lose it. A change the primary took but no
replica acknowledged stays pending: denied meanwhile, applied again until one does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis

from dialguard.changes import Change, ChangeKind
from dialguard.model import Facts
from dialguard.numbers import normalise
from dialguard.pending import Pending
from dialguard.store import Store, StoreUnavailable
from dialguard.store.keys import Keys
from tests.redis_ha import running_replica
from tests.redis_server import RedisServer, running_redis
from tests.waiting import wait_until

KEYS = Keys("dialguard:")
NUMBER = normalise("0612345678")


def dnc_add(change_id: str) -> Change:
    ts_ms = int(datetime(2026, 11, 30, 10, 0, tzinfo=UTC).timestamp() * 1000)
    return Change(change_id, ts_ms, ChangeKind.DNC_ADD, NUMBER.key, why="asked on the phone")


def store(server: RedisServer, replicas_ack: int = 1) -> Store:
    client = aioredis.Redis.from_url(server.url, socket_timeout=2)
    return Store(client, "dialguard:", replicas_ack=replicas_ack, ack_ms=200)


def on(server: RedisServer) -> bytes | None:
    with redis.Redis(host="127.0.0.1", port=server.port) as client:
        value: bytes | None = client.hget(KEYS.dnc_live, NUMBER.key)
        return value


def replication_offset(server: RedisServer) -> int:
    with redis.Redis(host="127.0.0.1", port=server.port) as client:
        return int(client.info("replication")["master_repl_offset"])


async def test_a_change_is_taken_once_a_replica_has_it() -> None:
    with running_redis(acl=False) as primary, running_replica(primary) as replica:
        ours = store(primary)
        assert await ours.apply(dnc_add("c1"))
        assert on(replica) is not None  # WAIT returned: the replica has it already
        await ours.close()


async def test_a_change_no_replica_acknowledged_stays_pending_until_one_does() -> None:
    with running_redis(acl=False) as primary, running_replica(primary) as replica:
        ours, another = store(primary), store(primary)
        replica.pause()  # linked, but acknowledges nothing
        try:
            with pytest.raises(StoreUnavailable, match="reached 0 of the 1 replica"):
                await ours.apply(dnc_add("c1"))
            assert on(primary) is not None  # the primary took it; a failover would lose it
            # Applied again, by anyone (another process: a connection that wrote nothing
            # yet), it is still not taken. WAIT counts the writes of its own connection
            # only: applying again moves the applied mark, a write to count.
            offset = replication_offset(primary)
            with pytest.raises(StoreUnavailable):
                await another.apply(dnc_add("c1"))
            assert replication_offset(primary) > offset

            pending = Pending(ours, None)
            assert await pending.submit(dnc_add("c2")) is None
            assert len(pending) == 1
            overlay = pending.overlay(NUMBER.key, "ACME", Facts())
            assert overlay.dnc is not None  # denied meanwhile
            await pending.start(datetime.now(UTC))
        finally:
            replica.resume()
        await wait_until(lambda: len(pending) == 0, 10)  # retried until acknowledged
        assert on(replica) is not None
        await pending.aclose()
        await ours.close()
        await another.close()


async def test_without_replicas_ack_the_primary_alone_takes_it() -> None:
    with running_redis(acl=False) as primary:
        ours = store(primary, replicas_ack=0)
        assert await ours.apply(dnc_add("c1"))
        assert not await ours.apply(dnc_add("c1"))  # applied once
        await ours.close()
