"""Redis memory per entry of each kind of data (docs/data-model.md, docs/benchmarks.md).

    .venv/bin/python bench/layout_memory.py --entries 1000000

Starts a private redis-server, writes `entries` entries of each kind the way dialguard
does (imports through the loader, live events through the Store), and prints Redis's
`used_memory` growth per entry. Numbers are random distinct French mobile numbers, so the
dense lists' figure depends on how many of the 200 million numbers a list holds: it is
printed for several sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dialguard.import_files import ConsentRow, ContractRow, DncRow, OptoutRow
from dialguard.model import Contract, Sector
from dialguard.numbers import normalise
from dialguard.store import Store
from dialguard.store.loading import load
from tests.redis_server import running_redis

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def mobiles(count: int, seed: int) -> list[str]:
    picked = random.Random(seed).sample(range(200_000_000), count)
    return [f"33{600_000_000 + n}" for n in picked]


async def used(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def measure(client: aioredis.Redis, label: str, count: int, write: Awaitable[object]) -> None:
    """Run `write` (not started yet) on an empty Redis and print its memory per entry."""
    await client.flushall()
    before = await used(client)
    await write
    after = await used(client)
    print(f"| {label} | {count:,} | {(after - before) / count:.2f} |", flush=True)


async def main(entries: int, dense_sizes: list[int]) -> None:
    with running_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        store = Store(client, "dialguard:")
        print("| kind | entries | bytes per entry |")
        print("|---|---:|---:|")
        for size in dense_sizes:
            keys = mobiles(size, size)
            rows = [DncRow(key, "") for key in keys]
            await measure(client, "dnc (imported)", size, load(store.lists, "dnc", rows, "replace"))
            results = [OptoutRow(key, i % 20 == 0, "") for i, key in enumerate(keys)]
            await measure(
                client,
                "registry result set (5 % listed)",
                size,
                load(store.lists, "bloctel", results, "replace", checked_on=date(2026, 11, 27)),
            )
        numbers = [normalise("+" + key) for key in mobiles(entries, 7)]
        given = NOW - timedelta(days=30)
        consents = [
            ConsentRow(n, "ACME", given, given + timedelta(days=365), f"webform-{i:08d}")
            for i, n in enumerate(numbers)
        ]
        await measure(client, "consent", entries, load(store.lists, "consent", consents, "replace"))
        contract = Contract("C-0000001", Sector.GENERAL, date(2025, 1, 1), None)
        contracts = [ContractRow(n, "ACME", contract) for n in numbers]
        await measure(
            client, "contract", entries, load(store.lists, "contract", contracts, "replace")
        )

        async def live(event: Callable[[int], Awaitable[object]]) -> None:
            # 50 at a time: redis-py's default pool holds 100 connections.
            for start in range(0, entries, 50):
                await asyncio.gather(*(event(i) for i in range(start, min(start + 50, entries))))

        await measure(
            client,
            "dnc:live (dnc add)",
            entries,
            live(lambda i: store.dnc_add(numbers[i], "asked during the call", NOW)),
        )
        await measure(
            client,
            "refusal (+ its withdrawal)",
            entries,
            live(lambda i: store.record_refusal(numbers[i], "ACME", NOW)),
        )
        await measure(
            client,
            "attempts (one counted call)",
            entries,
            live(lambda i: store.count_attempt(numbers[i], "ACME", NOW, 4, 30, f"id{i:012d}")),
        )
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument(
        "--dense-sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1_000_000, 10_000_000],
        help="list sizes for the dense lists (comma-separated)",
    )
    arguments = parser.parse_args()
    asyncio.run(main(arguments.entries, arguments.dense_sizes))
