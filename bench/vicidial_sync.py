"""The VICIdial sync at size (docs/vicidial.md, "Costs"): its first pass over a
`vicidial_dnc` of N entries, a pass with nothing changed, a pass with one change, and a
pass writing M live additions to VICIdial; beside them, in the same run, `dialguard import
dnc` of the same N numbers (the bulk path) and a bare `SELECT` of the table.

    .venv/bin/python bench/vicidial_sync.py [--entries 100000] [--additions 10000]

Starts a private Redis and a private MariaDB (tests/redis_server.py,
tests/mariadb_server.py; never 6379 or 3306), VICIdial's tables in it, a configuration
and a journal in a temporary directory, and runs the passes in this process through the
same objects `dialguard vicidial sync` builds (the service, the tables, the state).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dialguard.audit import Journal
from dialguard.cli.common import configure_logging
from dialguard.config import load_config
from dialguard.service import Service
from dialguard.store import Store
from dialguard.vicidial.state import State
from dialguard.vicidial.sync import Sync
from dialguard.vicidial.tables import Tables
from tests.mariadb_server import USER, MariaDbServer, running_mariadb
from tests.redis_server import running_redis

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
node = "bench"
[redis]
url = "{redis}"
timeout_ms = 5000
[audit]
dir = "audit"
[policy]
file = "{policy}"
[campaigns.prospecting]
principal = "ACME"
purpose = "prospecting"
[vicidial]
url = "{url}"
password_file = "secret"
"""


def number(i: int) -> str:
    """Half the entries in the national form, half without the trunk 0, as old installs mix."""
    return f"06{i:08d}" if i % 2 else f"6{i:08d}"


def fill(server: MariaDbServer, database: str, entries: int) -> None:
    with server.root(database) as db, db.cursor() as cursor:
        for start in range(0, entries, 10_000):
            rows = [(number(i),) for i in range(start, min(start + 10_000, entries))]
            cursor.executemany("INSERT INTO vicidial_dnc (phone_number) VALUES (%s)", rows)


def bare_select(server: MariaDbServer, database: str) -> float:
    started = time.perf_counter()
    with (
        pymysql.connect(
            host="127.0.0.1",
            port=server.port,
            user=USER,
            password=server.password,
            database=database,
        ) as db,
        db.cursor() as cursor,
    ):
        cursor.execute("SELECT phone_number FROM vicidial_dnc")
        assert len(cursor.fetchall()) > 0
    return time.perf_counter() - started


async def passes(config_path: Path, additions: int, insert_one: object) -> list[tuple[str, float]]:
    config = load_config(config_path, env={})
    assert config.vicidial is not None
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir))
    tables = Tables(config.vicidial)
    state = State(config.vicidial.state, "bench")
    sync = Sync(config, service, tables, state)
    timings: list[tuple[str, float]] = []

    async def timed(name: str) -> None:
        started = time.perf_counter()
        pushed, pulled = await sync.run_pass()
        elapsed = time.perf_counter() - started
        timings.append((name, elapsed))
        print(
            f"{name}: {elapsed:.2f} s (pushed {pushed.written:,}, added"
            f" {sum(pulled.added.values()):,}, removed {sum(pulled.removed.values()):,})",
            flush=True,
        )

    try:
        await timed("first pass")
        await timed("journal catch-up (the first pass's own records, not written back)")
        for i in range(3):
            await timed(f"nothing changed #{i + 1}")
        assert callable(insert_one)
        insert_one()
        await timed("one entry added in VICIdial")
        # As a busy day brings them: 200 at a time (the journal's group commit).
        for start in range(0, additions, 200):
            numbers = range(start, min(start + 200, additions))
            await asyncio.gather(*(service.dnc_add(f"07{i:08d}", "bench") for i in numbers))
        await timed(f"{additions:,} live additions written to VICIdial")
    finally:
        await service.aclose()
        await store.close()
        tables.close()
        state.close()
    return timings


def main() -> None:
    configure_logging(logging.WARNING)  # the passes' own lines, not each change's
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--additions", type=int, default=10_000)
    options = parser.parse_args()
    with (
        running_redis(acl=False) as redis_server,
        running_mariadb() as mariadb,
        mariadb.database() as database,
        tempfile.TemporaryDirectory() as work,
    ):
        directory = Path(work)
        fill(mariadb, database, options.entries)
        (directory / "secret").write_text(mariadb.password)
        config = directory / "dialguard.toml"
        config.write_text(
            CONFIG.format(
                redis=redis_server.url,
                policy=ROOT / "config" / "policy" / "france.toml",
                url=mariadb.url(database),
            )
        )
        print(f"bare SELECT of {options.entries:,} rows: {bare_select(mariadb, database):.2f} s")
        listing = directory / "dnc.csv"
        # The same lines, spelled as an export would (national form).
        listing.write_text("number\n" + "".join(f"06{i:08d}\n" for i in range(options.entries)))
        started = time.perf_counter()
        imported = subprocess.run(
            [str(Path(sys.executable).parent / "dialguard"), "import", "dnc", str(listing),
             "--config", str(config)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        print(f"import dnc of the same numbers: {time.perf_counter() - started:.2f} s")

        def insert_one() -> None:
            with mariadb.root(database) as db, db.cursor() as cursor:
                cursor.execute("INSERT INTO vicidial_dnc VALUES ('0799999999')")

        asyncio.run(passes(config, options.additions, insert_one))


if __name__ == "__main__":
    main()
