"""How many decisions one Redis primary can serve (docs/operations.md, "Why not Redis
Cluster").

Starts a private redis-server (never 6379), loads a 1-million-number do-not-call list
(and with `--consents N`, consents of ACME for N numbers spread evenly over the numbers
dialled: 100,000 puts ~50 in a bucket of a thousand numbers, as ten million French
mobiles do), then runs CLIENTS processes, each with CONCURRENCY decisions in flight
through Store.facts (the decision's script, batched as `serve` batches it, each reserving
an attempt slot as a real call does) for SECONDS. Prints decisions/s, Redis's CPU seconds per
decision (INFO used_cpu_*) and the script's µs per call and per decision inside Redis (INFO
commandstats): the ceiling of one Redis core is 1e6 / (Redis µs per decision).

    .venv/bin/python bench/redis_capacity.py [--clients 2] [--seconds 10] [--consents N]

It uses nothing but `Store`, `load` and the row types, so another checkout's src/ on
PYTHONPATH measures that code's script with this same driver.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dialguard.import_files import ConsentRow, DncRow
from dialguard.numbers import normalise
from dialguard.store import Store
from dialguard.store.loading import load
from tests.redis_server import running_redis

PREFIX = "dialguard:"
LISTED = 1_000_000
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def number(i: int) -> str:
    return f"06{i:08d}"


async def _load(url: str, consents: int) -> None:
    store = Store.from_url(url, PREFIX, 60_000)
    rows = [DncRow(normalise(number(i)).key, "listed") for i in range(0, 2 * LISTED, 2)]
    await load(store.lists, "dnc", rows, "replace")
    given = datetime(2026, 10, 1, tzinfo=UTC)
    consented = [
        ConsentRow(normalise(number(i)), "ACME", given, None, f"WEB-{i:012d}")
        for i in range(1, 2 * LISTED, 2 * LISTED // consents)
    ]
    if consented:
        await load(store.lists, "consent", consented, "replace")
    await store.close()


async def _drive(url: str, seconds: float, concurrency: int, seed: int) -> int:
    store = Store.from_url(url, PREFIX, 5_000)
    pick = random.Random(seed)
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            dialled = normalise(number(pick.randrange(2 * LISTED)))
            attempt = f"{seed}-{done}-{pick.random()}"
            await store.facts(dialled, "ACME", NOW, 30, (4, attempt))
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await store.close()
    return done


def _client(
    url: str, seconds: float, concurrency: int, seed: int, out: multiprocessing.Queue[int]
) -> None:
    import uvloop

    out.put(uvloop.run(_drive(url, seconds, concurrency, seed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--consents", type=int, default=0, help="consents loaded, spread")
    options = parser.parse_args()
    with running_redis(acl=False) as server:
        asyncio.run(_load(server.url, options.consents))
        admin = redis.Redis.from_url(server.url)
        admin.config_resetstat()
        before = admin.info("cpu")
        queue: multiprocessing.Queue[int] = multiprocessing.Queue()
        workers = [
            multiprocessing.Process(
                target=_client,
                args=(server.url, options.seconds, options.concurrency, seed, queue),
            )
            for seed in range(options.clients)
        ]
        started = time.monotonic()
        for process in workers:
            process.start()
        decisions = sum(queue.get() for _ in workers)
        for process in workers:
            process.join()
        elapsed = time.monotonic() - started
        after = admin.info("cpu")
        stats = admin.info("commandstats")["cmdstat_evalsha"]
        admin.close()
    cpu = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
    per_batch = decisions / stats["calls"]
    print(
        f"{decisions / elapsed:,.0f} decisions/s over {elapsed:.1f} s ({options.clients} clients x"
        f" {options.concurrency} in flight); Redis CPU {cpu / elapsed * 100:.0f}% of a core,"
        f" {cpu / decisions * 1e6:.1f} µs per decision; the script: {stats['calls']:,} calls,"
        f" {per_batch:.1f} decisions per call, {stats['usec_per_call']:.1f} µs per call,"
        f" {stats['usec_per_call'] / per_batch:.1f} µs per decision inside Redis"
        f" (ceiling of one Redis core: {per_batch / stats['usec_per_call'] * 1e6:,.0f} decisions/s)"
    )


if __name__ == "__main__":
    main()
