"""Redis at its limits while `dialguard serve` decides: maxmemory reached by an import,
Redis slowed (DEBUG SLEEP, CLIENT PAUSE), a replica promoted by hand. Each with a
steady load of well-behaved calls (a fail-closed campaign) and a private redis-server.

    .venv/bin/pytest tests/reliability/test_redis_limits.py -s            # short
    .venv/bin/pytest tests/reliability/test_redis_limits.py -s -m long    # the 10 M import

Each test prints one `ROW |` line of docs/reliability.md's table.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agi.asterisk_peer import run_session
from tests.redis_ha import running_replica, wait_for
from tests.redis_server import RedisServer, running_redis
from tests.reliability.served import HOST, Calls, Served, dialguard_serve, one_call, row, steady

ROOT = Path(__file__).resolve().parents[2]
NORMAL = "ALLOW NON_COMMERCIAL"
DEGRADED = {"DENY STORE_UNAVAILABLE", "DENY DEADLINE"}
RATE = 100.0


@pytest.fixture
def debug_redis() -> Iterator[RedisServer]:
    """A private redis-server that takes DEBUG (Redis 7 refuses it unless enabled)."""
    with running_redis(args=["--enable-debug-command", "yes"], acl=False) as server:
        yield server


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port)


def dialguard_cli(served: Served, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    env |= {"DIALGUARD_CONFIG": str(served.directory / "dialguard.toml")}
    env |= {"DIALGUARD_REDIS_URL": redis_url, "COLUMNS": "200"}
    command = [str(Path(sys.executable).parent / "dialguard"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def write_dnc(path: Path, numbers: Iterator[str] | list[str]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        out.write("number\n")
        for number in numbers:
            out.write(number + "\n")
    return path


def records_of(served: Served, calls: Calls) -> tuple[int, int]:
    """(answers without a record, degraded answers whose record does not say so)."""
    by_id = {record["id"]: record for record in served.records()}
    lost = sum(1 for decision_id in calls.ids if decision_id not in by_id)
    unmarked = sum(
        1
        for decision_id in calls.ids
        if decision_id in by_id
        and by_id[decision_id]["reason"] in ("STORE_UNAVAILABLE", "DEADLINE")
        and not by_id[decision_id].get("degraded")
    )
    return lost, unmarked


# --- maxmemory during an import ------------------------------------------------------------


def spread(count: int) -> Iterator[str]:
    """`count` mobile numbers spread as a real list's are (consecutive ones would pack
    far tighter than any real list), the same ones each run; 0700000005 among them."""
    rng = random.Random(17)
    yield "0700000005"
    for _ in range(count - 1):
        yield f"0{rng.choice('67')}{rng.randrange(100_000_000):08d}"


@pytest.mark.parametrize(
    ("numbers", "headroom_mb"),
    [
        pytest.param(2_000_000, 2, id="2M"),
        pytest.param(10_000_000, 12, id="10M", marks=pytest.mark.long),
    ],
)
async def test_maxmemory_reached_by_an_import(
    tmp_path: Path, numbers: int, headroom_mb: int
) -> None:
    with running_redis(args=["--maxmemory-policy", "noeviction"], acl=False) as server:
        client = admin(server)
        async with dialguard_serve(tmp_path / "serve", server.url) as served:
            listed = "0611111111"
            small = write_dnc(
                tmp_path / "small.csv", [listed, *(f"061{i:07d}" for i in range(999))]
            )
            done = dialguard_cli(served, server.url, "import", "dnc", str(small), "--replace")
            assert done.returncode == 0, done.stderr
            big = write_dnc(tmp_path / "big.csv", spread(numbers))
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", used + headroom_mb * 1024 * 1024)

            started = time.monotonic()
            load = asyncio.create_task(steady(served.port, RATE, 3600, stop=lambda: load_done))
            load_done = False
            imported = await asyncio.to_thread(
                dialguard_cli, served, server.url, "import", "dnc", str(big), "--replace"
            )
            import_s = time.monotonic() - started
            load_done = True
            calls = await load

            # The import failed in one line; the list in force is the one before it.
            assert imported.returncode == 2, imported
            (line,) = imported.stderr.strip().splitlines()
            assert "Traceback" not in imported.stderr
            assert line.startswith("dialguard: ") and "maxmemory" in line, line
            after = Calls()
            await one_call(served.port, after, number=listed)
            await one_call(served.port, after, number="0700000005")  # only in the big file
            assert after.timeline[0][1] == "DENY INTERNAL_DNC", after
            assert after.timeline[1][1] == NORMAL, after
            # What the import had built is gone: decisions can write their counts again.
            left = int(client.info("memory")["used_memory"])
            assert left < used + headroom_mb * 1024 * 1024 // 2, (used, left)
            lost, unmarked = records_of(served, calls)
            assert lost == unmarked == 0
            assert calls.failed == 0, calls  # every call answered
            recovered = calls.normal_again(started + import_s)
            row(
                f"maxmemory reached by `import dnc --replace` of {numbers:,} numbers"
                f" (+{headroom_mb} MB allowed)",
                f"{RATE:.0f} calls/s",
                f"{calls.got()}; p99 {calls.quantile_ms(0.99)} ms; import: `{line}`",
                lost,
                "0 s (list in force untouched)" if math.isnan(recovered) or recovered == 0
                else f"{recovered:.2f} s after the import gave up",
                f"Redis {used // 1024} KiB before, {left // 1024} KiB after",
            )  # fmt: skip
            assert served.stop() == 0
        client.close()


# --- Redis slowed ----------------------------------------------------------------------------


async def fault_under_load(
    served: Served, fault: str, client: redis.Redis, seconds_in: float = 1.0
) -> tuple[Calls, float]:
    """Steady load for 3 s; at `seconds_in`, `fault` (a Redis command) is sent; returns
    the calls and when the fault's command returned."""
    load = asyncio.create_task(steady(served.port, RATE, 3.0))
    await asyncio.sleep(seconds_in)
    await asyncio.to_thread(client.execute_command, *fault.split())
    ended = time.monotonic()
    return await load, ended


@pytest.mark.parametrize(
    ("fault", "blocked_s"),
    [
        ("DEBUG SLEEP 1", 1.0),
        ("CLIENT PAUSE 1000 WRITE", 1.0),
        pytest.param("CLIENT PAUSE 1000 ALL", 1.0, marks=pytest.mark.long),  # as DEBUG SLEEP
    ],
)
async def test_redis_slowed(
    debug_redis: RedisServer, tmp_path: Path, fault: str, blocked_s: float
) -> None:
    client = admin(debug_redis)
    async with dialguard_serve(tmp_path, debug_redis.url) as served:
        before = served.sample()
        calls, returned = await fault_under_load(served, fault, client)
        # CLIENT PAUSE returns at once and pauses for its time; DEBUG SLEEP returns after.
        fault_end = returned + (blocked_s if fault.startswith("CLIENT") else 0)
        got = set(calls.answers)
        assert got <= {NORMAL} | DEGRADED, calls.answers
        assert got & DEGRADED, calls.answers  # the fault was felt
        assert calls.failed == 0, calls
        # Within the deadline (300 ms) plus the session's own time, every call answered.
        assert max(calls.latencies) < 0.8, max(calls.latencies)
        recovered = calls.normal_again(fault_end)
        assert recovered < 1.0, recovered
        degraded = [t for t, answer in calls.timeline if answer in DEGRADED]
        window = max(degraded) - min(degraded)
        lost, unmarked = records_of(served, calls)
        assert lost == unmarked == 0
        after = served.sample()
        row(
            f"Redis `{fault}`",
            f"{RATE:.0f} calls/s, deadline 300 ms",
            f"{calls.got()}; p99 {calls.quantile_ms(0.99)} ms,"
            f" max {round(max(calls.latencies) * 1000)} ms",
            lost,
            f"degraded for {window:.2f} s; normal {recovered:.2f} s after Redis answered",
            f"RSS {before.rss_kib // 1024} → {after.rss_kib // 1024} MiB,"
            f" fds {before.fds} → {after.fds}",
        )
        assert served.stop() == 0
    client.close()


# --- a replica promoted by hand -----------------------------------------------------------


async def test_a_replica_promoted_by_hand(tmp_path: Path) -> None:
    """The operator promotes the replica (REPLICAOF NO ONE) and demotes the old primary
    (REPLICAOF new), without Sentinel, the service still pointed at the old one. It
    reads the new primary's data through the demoted one (a replica now), so decisions
    go on; what must be written fails there (READONLY): a do-not-call taken meanwhile
    stays pending in the journal and is enforced by this node alone. Pointed at the new
    primary (a restart with the new URL, docs/reliability.md), it applies it."""
    with running_redis(acl=False) as primary, running_replica(primary) as replica:
        old, new = admin(primary), admin(replica)
        dnc = "0622222222"
        async with dialguard_serve(tmp_path, primary.url) as served:
            load = asyncio.create_task(steady(served.port, RATE, 3.0))
            await asyncio.sleep(0.5)
            new.replicaof("NO", "ONE")
            await asyncio.sleep(0.5)
            old.replicaof("127.0.0.1", replica.port)
            wait_for(lambda: old.info("replication")["master_link_status"] == "up", "resync")
            outcome = await run_session(
                HOST, served.port, script="outcome", args=(dnc, "do-not-call", "demo-survey")
            )
            assert outcome.variables["DIALGUARD_OUTCOME"] == "PENDING", outcome.variables
            check = Calls()
            await one_call(served.port, check, number=dnc)
            assert check.timeline[0][1] == "DENY INTERNAL_DNC"  # held by this node meanwhile
            calls = await load
            assert calls.failed == 0 and set(calls.answers) == {NORMAL}, calls
            waiting = dialguard_cli(served, primary.url, "audit", "pending", "--json")
            assert len(waiting.stdout.splitlines()) == 1, waiting
            lost, _ = records_of(served, calls)
            assert lost == 0
            assert served.stop() == 0
        restarted = time.monotonic()
        async with dialguard_serve(tmp_path, replica.url) as served:
            ready_s = time.monotonic() - restarted
            after = Calls()
            await one_call(served.port, after, number=dnc)
            await asyncio.gather(*(one_call(served.port, after) for _ in range(20)))
            assert after.timeline[0][1] == "DENY INTERNAL_DNC", after.timeline[0]
            assert after.answers == {"DENY INTERNAL_DNC": 1, NORMAL: 20}
            waiting = dialguard_cli(served, replica.url, "audit", "pending", "--json")
            assert waiting.returncode == 0 and waiting.stdout == "", waiting  # applied
            assert served.stop() == 0
        row(
            "replica promoted by hand (REPLICAOF NO ONE), old primary demoted under the service",
            f"{RATE:.0f} calls/s + a do-not-call",
            f"{calls.got()} (facts read through the demoted primary); the do-not-call"
            " PENDING, denied by this node meanwhile",
            lost,
            f"restarted on the new primary in {ready_s:.1f} s: the pending do-not-call"
            " applied at start",
            "",
        )
        old.close()
        new.close()
