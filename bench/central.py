"""Central store benchmarks (docs/benchmarks.md, "Central store").

    .venv/bin/python bench/central.py ship --records 200000 --runs 3
    .venv/bin/python bench/central.py lag --rate 1000 --seconds 30
    .venv/bin/python bench/central.py query --records 2000000 --days 60

Each starts its own PostgreSQL (tests/postgres_server.py: initdb + pg_ctl on a free port,
fsync on, never the machine's 5432) and uses a SQLite file in a temporary directory.

- ship: a journal of N decision records (~1.5 KB each, bench/audit_bench.py's records and
  format code) shipped into an empty store with the shipper (`Shipper.ship`: read,
  re-hash and link each line, batches of 5,000 in one transaction each, rollups in the
  same transaction); records/s, median of the runs, each into a fresh store.
- lag: the real journal writer (`Journal.append`, fsync'd group commit) appends records
  stamped with the current time at a steady rate while `dialguard audit ship --follow`
  (what `serve` runs) ships them; per record, `shipped_at - ts` (shipped_at is taken as its
  batch goes to the store, just before the commit).
- query: N records over D days shipped into each store, then `search_number` (the
  console's search by number, newest first) and `stats.summary` over the last 30 days
  (from the rollups only), each timed 5 times in-process.

At scale (the console's pages over 10 M records in PostgreSQL, 1 M in SQLite):

    .venv/bin/python bench/central.py load --backend postgresql --records 10000000 \
        --days 75 --store /var/tmp/central-10m
    .venv/bin/python bench/central.py pages --backend postgresql --store /var/tmp/central-10m
    .venv/bin/python bench/central.py console --backend postgresql --store /var/tmp/central-10m
    .venv/bin/python bench/central.py load --backend sqlite --records 1000000 --store ...

- load: a realistic store (tests/central_corpus.py: 3 nodes, 15 campaigns, weekdays'
  calling hours, a long tail of numbers and some called thousands of times, ~1.8 KB
  records) stored through the store's own `ingest`, batch by batch with each node's
  cursor: what the shippers would have stored, without writing and reading back a
  journal of 18 GB first. The PostgreSQL cluster is kept in `--store` (its own, on a free
  port, fsync on) to be measured again; delete the directory when done.
- console: the console's real pages over HTTP on that store (bench/console_pages.py: a
  user made with `console user add --password-stdin`, a login, each page's first request
  and `--requests` more, Server-Timing's `total` and `db`), and 30 days of stats.
- migrate: `central migrate` on it (a new version's steps over millions of records);
  prune: `central prune` of the months before `--before`, then `audit verify --central`.
- pages: restarts the cluster (its buffers cold; the OS's page cache is not emptied), then
  times each query a console page needs, the first run and the median of `--runs`: a
  number's records, the Today figures (rollups of the day, per-node cursor, newest
  record, breaks), 30 days of stats, one record by id, and search pages filtered by
  campaign, reason, result, node, principal and dates, newest first, 50 a page, the next
  page from the last row's (ts, id).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audit_bench import build, number_of, sample_record  # noqa: E402
from central_pages import load_store, migrate_store, pages, prune_store  # noqa: E402
from console_pages import console_pages  # noqa: E402

from dialguard.audit import Journal  # noqa: E402
from dialguard.central import CentralStore, open_store  # noqa: E402
from dialguard.central.ship import Shipper  # noqa: E402
from dialguard.central.stats import summary  # noqa: E402
from dialguard.config import CentralSettings  # noqa: E402
from tests.postgres_server import PostgresServer, running_postgres  # noqa: E402

BACKENDS = ("postgresql", "sqlite")


@contextmanager
def stores(workdir: Path) -> Iterator[tuple[PostgresServer, Iterator[int]]]:
    with running_postgres(durable=True) as server:
        yield server, iter(range(1_000_000))


def settings_for(backend: str, server: PostgresServer, workdir: Path, n: int) -> CentralSettings:
    if backend == "sqlite":
        return CentralSettings(workdir / f"central-{n}.sqlite3")
    name = f"bench_{n}"
    with server.admin() as db:
        db.execute(f"CREATE DATABASE {name}".encode())
    return CentralSettings(None, url=server.url(name), password=server.password)


def ship(records: int, runs: int, batch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dialguard-central-") as tmp:
        workdir = Path(tmp)
        journal = workdir / "audit"
        build(journal, records, per_day=max(records // 3, 1))
        size = sum(p.stat().st_size for p in journal.glob("*.jsonl"))
        with stores(workdir) as (server, numbers):
            for backend in BACKENDS:
                rates = []
                for _ in range(runs):
                    settings = settings_for(backend, server, workdir, next(numbers))
                    with open_store(settings) as store:
                        store.migrate()
                        began, cpu = time.perf_counter(), time.process_time()
                        report = Shipper(store, journal, "node-1", batch).ship()
                        elapsed = time.perf_counter() - began
                        used = time.process_time() - cpu
                    assert report.stored == records, report
                    rates.append(records / elapsed)
                    print(
                        f"ship {backend}: {records:,} records ({size / 1e6:,.0f} MB) in"
                        f" {elapsed:.1f} s = {records / elapsed:,.0f}/s; shipper CPU"
                        f" {used / records * 1e6:.0f} µs/record",
                        flush=True,
                    )
                print(
                    f"ship {backend}: median of {runs}: {statistics.median(rates):,.0f}"
                    f" records/s (batches of {batch:,})",
                    flush=True,
                )


async def _append(directory: Path, rate: int, seconds: float) -> int:
    journal = Journal(directory)
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    began = loop.time()
    tasks = []
    for n in range(total):
        due = began + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ts = int(time.time() * 1000)
        tasks.append(asyncio.ensure_future(journal.append(sample_record(n, ts, number_of(n)))))
    await asyncio.gather(*tasks)
    return total


def lag(rate: int, seconds: float, poll_ms: int) -> None:
    dialguard = Path(sys.executable).with_name("dialguard")
    with tempfile.TemporaryDirectory(prefix="dialguard-central-") as tmp:
        workdir = Path(tmp)
        with stores(workdir) as (server, numbers):
            for backend in BACKENDS:
                settings = settings_for(backend, server, workdir, next(numbers))
                journal = workdir / f"audit-{backend}"
                config = workdir / f"{backend}.toml"
                config.write_text(
                    f'node = "node-1"\n[audit]\ndir = "{journal}"\n[policy]\n'
                    f'file = "{ROOT / "config/policy/france.toml"}"\n'
                    f"[central]\npoll_ms = {poll_ms}\n"
                    + (f'path = "{settings.path}"\n' if settings.path else "")
                    + '[campaigns.c]\nprincipal = "ACME"\npurpose = "prospecting"\n',
                    encoding="utf-8",
                )
                env = {**os.environ}
                if settings.url:
                    env |= {
                        "DIALGUARD_CENTRAL_URL": settings.url,
                        "DIALGUARD_CENTRAL_PASSWORD": server.password,
                    }
                shipper = subprocess.Popen(
                    [str(dialguard), "audit", "ship", "--follow", "--config", str(config)],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    total = asyncio.run(_append(journal, rate, seconds))
                    with open_store(settings) as store:
                        deadline = time.monotonic() + 30
                        while _stored(store) < total and time.monotonic() < deadline:
                            time.sleep(0.1)
                        lags = sorted(_lags(store, backend))
                finally:
                    shipper.terminate()
                    shipper.wait(30)
                p99 = lags[int(len(lags) * 0.99)]
                print(
                    f"lag {backend} at {rate:,} records/s for {seconds:.0f} s, poll {poll_ms} ms:"
                    f" {len(lags):,} of {total:,} shipped; p50 {statistics.median(lags):.0f} ms,"
                    f" p99 {p99:.0f} ms, max {lags[-1]:.0f} ms",
                    flush=True,
                )


def _stored(store: CentralStore) -> int:
    cursor = store.cursor("node-1")
    return cursor.records if cursor is not None else 0


def _lags(store: CentralStore, backend: str) -> list[int]:
    query = "SELECT shipped_at - ts FROM records"
    if backend == "sqlite":
        return [row[0] for row in store.db.execute(query)]  # type: ignore[attr-defined]
    return [row[0] for row in store.db.execute(query.encode()).fetchall()]  # type: ignore[attr-defined]


def query(records: int, days: int, batch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dialguard-central-") as tmp:
        workdir = Path(tmp)
        journal = workdir / "audit"
        began = time.perf_counter()
        build(journal, records, per_day=max(records // days, 1))
        print(f"journal of {records:,} records over {days} days built in"
              f" {time.perf_counter() - began:.0f} s", flush=True)  # fmt: skip
        last = max(journal.glob("audit-*.jsonl")).name[6:16]
        end = datetime.fromisoformat(last).replace(tzinfo=ZoneInfo("Europe/Paris"))
        until = int(end.timestamp() * 1000) + 86_400_000
        since = until - 30 * 86_400_000
        with stores(workdir) as (server, numbers):
            for backend in BACKENDS:
                settings = settings_for(backend, server, workdir, next(numbers))
                with open_store(settings) as store:
                    store.migrate()
                    began = time.perf_counter()
                    Shipper(store, journal, "node-1", batch).ship()
                    shipped = time.perf_counter() - began
                    if backend == "postgresql":
                        store.db.execute(b"VACUUM ANALYZE records")  # type: ignore[attr-defined]
                    searches, found = _timed(
                        lambda: len(store.search_number("+33612345678", None, None, 50))
                    )
                    stats, decisions = _timed(
                        lambda: summary(store, since, until, ZoneInfo("Europe/Paris"))["decisions"]
                    )
                print(
                    f"query {backend}: {records:,} records (shipped in {shipped:.0f} s ="
                    f" {records / shipped:,.0f}/s); search by number ({found} found):"
                    f" median {statistics.median(searches) * 1000:.1f} ms, first"
                    f" {searches[0] * 1000:.1f} ms; stats of 30 days from the rollups"
                    f" ({decisions:,} decisions): median {statistics.median(stats) * 1000:.1f}"
                    f" ms, first {stats[0] * 1000:.1f} ms",
                    flush=True,
                )


def _timed(call: object, runs: int = 5) -> tuple[list[float], int]:
    assert callable(call)
    times = []
    result = 0
    for _ in range(runs):
        began = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - began)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ship")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=5000)
    p = sub.add_parser("lag")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--poll-ms", type=int, default=500)
    p = sub.add_parser("query")
    p.add_argument("--records", type=int, default=2_000_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--batch", type=int, default=5000)
    p = sub.add_parser("load")
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--days", type=int, default=75)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--store", type=Path, required=True, help="a directory: the store stays")
    p = sub.add_parser("pages")
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--explain", action="store_true", help="PostgreSQL: print each plan")
    p = sub.add_parser("console")
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--requests", type=int, default=20, help="per page, after the first")
    p = sub.add_parser("migrate")
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--store", type=Path, required=True)
    p = sub.add_parser("prune")
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--before", type=date.fromisoformat, required=True, help="a month's first day")
    args = parser.parse_args()
    if args.what == "ship":
        ship(args.records, args.runs, args.batch)
    elif args.what == "lag":
        lag(args.rate, args.seconds, args.poll_ms)
    elif args.what == "query":
        query(args.records, args.days, args.batch)
    elif args.what == "load":
        load_store(args.backend, args.store, args.records, args.days, args.batch)
    elif args.what == "console":
        console_pages(args.backend, args.store, args.requests)
    elif args.what == "migrate":
        migrate_store(args.backend, args.store)
    elif args.what == "prune":
        prune_store(args.backend, args.store, args.before)
    else:
        pages(args.backend, args.store, args.runs, args.explain)


if __name__ == "__main__":
    main()
