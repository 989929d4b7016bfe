"""`bench/central.py load|pages`: a store the size of months of calls, and the queries the
console's pages make on it, timed (docs/benchmarks.md, "Central store at scale").

The search pages' SQL is written here as the console needs it (filters on indexed
columns, a date range, newest first, 50 rows, the next page after the last row's
(ts, id): keyset paging, whose cost does not grow with the page number as OFFSET's does),
in the shape of the console's own query (its branch's `search_query`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dialguard.central import CentralStore, open_store
from dialguard.central.retention import day_number
from dialguard.central.stats import summary
from dialguard.central.verify import verify_node
from dialguard.config import CentralSettings
from tests.central_corpus import Corpus, last_weekday, load
from tests.postgres_server import running_postgres

PARIS = ZoneInfo("Europe/Paris")
DATABASE = "central"
SQLITE_FILE = "central.sqlite3"
PAGE = 50
FILTERS = ("campaign", "reason", "result", "node", "principal", "kind")


@contextmanager
def opened(backend: str, directory: Path) -> Iterator[CentralStore]:
    """The store kept in `directory`; PostgreSQL's cluster started for it (its buffers
    empty) and stopped after."""
    if backend == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        with open_store(CentralSettings(directory / SQLITE_FILE)) as store:
            yield store
        return
    with running_postgres(durable=True, kept=directory / "pg") as server:
        with server.admin() as db:
            found = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if found.fetchone() is None:
                db.execute(f"CREATE DATABASE {DATABASE}".encode())
        settings = CentralSettings(None, url=server.url(DATABASE), password=server.password)
        with open_store(settings) as store:
            yield store


def sql(store: CentralStore, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A query in the driver's own marks (`?`; `%s` for PostgreSQL, rewritten here)."""
    db: Any = store.db  # type: ignore[attr-defined]
    if store.backend == "sqlite":
        return list(db.execute(query, args).fetchall())
    marked = query.replace("%", "%%").replace("?", "%s")
    return list(db.execute(marked.encode(), args).fetchall())


def load_store(backend: str, directory: Path, records: int, days: int, batch: int) -> None:
    last_day = last_weekday(date.today())
    corpus = Corpus(records, days, last_day)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"records": records, "days": days, "last_day": last_day.isoformat()}
    (directory / f"corpus-{backend}.json").write_text(json.dumps(meta), encoding="utf-8")
    began = time.perf_counter()
    marks = iter(range(500_000, 10**10, 500_000))
    mark = next(marks)

    def progress(stored: int) -> None:
        nonlocal mark
        if stored >= mark:
            elapsed = time.perf_counter() - began
            print(f"{stored:,} stored in {elapsed:.0f} s ({stored / elapsed:,.0f}/s)", flush=True)
            mark = next(marks)

    with opened(backend, directory) as store:
        store.migrate()
        stored = load(store, corpus, batch, progress=progress)
        elapsed = time.perf_counter() - began
        print(
            f"load {backend}: {stored:,} records over {days} days to {last_day} in"
            f" {elapsed:.0f} s = {stored / elapsed:,.0f}/s (generating, sealing and checking"
            " each line included)",
            flush=True,
        )
        began = time.perf_counter()
        if backend == "postgresql":
            sql_autocommit(store, "VACUUM ANALYZE")
        print(f"vacuum/analyze: {time.perf_counter() - began:.0f} s", flush=True)
        sizes(store, directory)


def sql_autocommit(store: CentralStore, statement: str) -> None:
    store.db.execute(statement.encode())  # type: ignore[attr-defined]


def sizes(store: CentralStore, directory: Path) -> None:
    """What the store takes on disk: the whole, then records, their lines and indexes."""
    if store.backend == "sqlite":
        path = directory / SQLITE_FILE
        wal = Path(f"{path}-wal")
        print(f"size: {path.stat().st_size / 1e9:.2f} GB"
              f" (+ WAL {wal.stat().st_size / 1e6 if wal.exists() else 0:.0f} MB)")  # fmt: skip
        try:
            rows = sql(store, "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        except Exception as exc:  # dbstat is an optional SQLite module
            print(f"(no dbstat: {exc})")
            return
        for name, size in rows[:12]:
            print(f"  {name}: {size / 1e6:,.0f} MB")
        return
    (total,) = sql(store, "SELECT pg_database_size(current_database())")[0]
    print(f"size: database {total / 1e9:.2f} GB", end="")
    du = subprocess.run(["du", "-sb", str(directory / "pg")], capture_output=True, text=True)
    if du.returncode == 0:
        print(f"; cluster directory (WAL included) {int(du.stdout.split()[0]) / 1e9:.2f} GB")
    rows = sql(
        store,
        "SELECT sum(pg_relation_size(c.oid)), sum(pg_total_relation_size(c.oid))"
        " - sum(pg_relation_size(c.oid)) - sum(pg_indexes_size(c.oid)),"
        " sum(pg_indexes_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'records'::regclass",
    )
    heap, toast, indexes = (int(v) for v in rows[0])
    print(
        f"  records: heap {heap / 1e9:.2f} GB, TOAST (the lines) {toast / 1e9:.2f} GB,"
        f" indexes {indexes / 1e9:.2f} GB"
    )
    for name, size in sql(
        store,
        "SELECT regexp_replace(c.relname, '^records_[0-9_]+_', 'records_'),"
        " sum(pg_relation_size(c.oid)) FROM pg_class c"
        " JOIN pg_index x ON x.indexrelid = c.oid JOIN pg_inherits i ON i.inhrelid = x.indrelid"
        " WHERE i.inhparent = 'records'::regclass GROUP BY 1 ORDER BY 2 DESC",
    ):
        print(f"  index {name}: {int(size) / 1e6:,.0f} MB")
    for table in ("rollups", "cursors", "chain_breaks"):
        (size,) = sql(store, f"SELECT pg_total_relation_size('{table}')")[0]
        print(f"  {table}: {int(size) / 1e6:,.1f} MB")


# --- the pages' queries -------------------------------------------------------------------


def page(
    store: CentralStore,
    filters: dict[str, str],
    since_ms: int,
    until_ms: int,
    after: tuple[int, str] | None = None,
) -> list[tuple[Any, ...]]:
    """A search page: the records matching every filter in [since, until), newest first,
    PAGE of them, after the last row (ts, id) of the page before. The console's search
    query has this shape: the keyset bound is written `ts <= t AND (ts < t OR id < i)`,
    so every (column, ts) index serves `ts <= t` as a range."""
    clauses = [f"{column} = ?" for column in filters if column in FILTERS]
    assert len(clauses) == len(filters), filters  # column names never come from outside
    args: list[Any] = [*filters.values(), since_ms, until_ms]
    clauses += ["ts >= ?", "ts < ?"]
    if after is not None:
        clauses.append("ts <= ? AND (ts < ? OR id < ?)")
        args += [after[0], after[0], after[1]]
    query = (
        "SELECT node, id, ts, line FROM records WHERE " + " AND ".join(clauses)
        + " ORDER BY ts DESC, id DESC LIMIT ?"
    )  # fmt: skip
    return sql(store, query, (*args, PAGE))


def by_id(store: CentralStore, record_id: str) -> list[tuple[Any, ...]]:
    return sql(store, "SELECT node, id, ts, line FROM records WHERE id = ?", (record_id,))


def by_id_and_ts(store: CentralStore, record_id: str) -> list[tuple[Any, ...]]:
    """The id starts with the record's ms in hex: PostgreSQL then reads one month's
    partition only (a record of another kind, stamped otherwise, falls back to by_id)."""
    ts = int(record_id[:12], 16)
    return sql(store, "SELECT node, id, ts, line FROM records WHERE id = ? AND ts = ?",
               (record_id, ts)) or by_id(store, record_id)  # fmt: skip


def newest(store: CentralStore, node: str) -> list[tuple[Any, ...]]:
    """A node's last record in chain order (its ts: how far behind the store is)."""
    return sql(
        store,
        "SELECT ts, id FROM records WHERE node = ? ORDER BY file_day DESC, file_offset DESC"
        " LIMIT 1",
        (node,),
    )


def today(store: CentralStore, since: int, until: int) -> int:
    """The Today page's reads: the day's rollups, the nodes' cursors, each one's newest
    record and chain breaks."""
    figures = summary(store, since, until, PARIS)
    for cursor in store.nodes():
        newest(store, cursor.node)
        if cursor.breaks:
            store.breaks(cursor.node, 1)
    return int(figures["decisions"])


def midnight(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=PARIS).timestamp() * 1000)


def timed(call: Callable[[], object], runs: int) -> tuple[float, float, object]:
    """(first run, median of the runs after it, in ms; what the last run returned)."""
    times = []
    result: object = None
    for _ in range(runs + 1):
        began = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - began) * 1000)
    return times[0], statistics.median(times[1:]), result


def pages(backend: str, directory: Path, runs: int, explain: bool) -> None:
    meta = json.loads((directory / f"corpus-{backend}.json").read_text(encoding="utf-8"))
    last_day = date.fromisoformat(meta["last_day"])
    since, until = midnight(last_day), midnight(last_day + timedelta(days=1))
    month = midnight(last_day - timedelta(days=29))
    with opened(backend, directory) as store:
        checks = _checks(store, since, until, month)
        print(
            f"pages {backend}: {meta['records']:,} records, Today = {last_day}; the first run"
            f" after a restart, then the median of {runs}"
        )
        print("| query | first ms | median ms | rows |")
        print("|---|---|---|---|")
        for label, call in checks:
            first, median, result = timed(call, runs)
            print(f"| {label} | {first:.1f} | {median:.1f} | {result} |", flush=True)
        if explain:
            plans(store, month, until)


def _checks(
    store: CentralStore, since: int, until: int, month: int
) -> list[tuple[str, Callable[[], object]]]:
    """Each query a page makes, with what it is called. The numbers and ids are picked
    first (reading a few pages of the newest day)."""
    hot = f"+33{(7 * 7_919) % 900_000_000 + 100_000_000}"
    tail = sql(store, "SELECT number FROM records WHERE ts >= ? AND number LIKE '+337%' LIMIT 1",
               (since,))[0][0]  # fmt: skip
    old = sql(store, "SELECT id FROM records WHERE ts >= ? LIMIT 1", (month,))[0][0]
    new = sql(store, "SELECT id FROM records WHERE ts >= ? LIMIT 1", (since,))[0][0]
    nodes = [cursor.node for cursor in store.nodes()]
    common = {"campaign": "fibre-idf", "reason": "NO_CONSENT"}
    first = page(store, common, month, until)
    after_first = (first[-1][2], first[-1][1])
    middle = (month + (until - month) // 2, "~")

    def search(filters: dict[str, str], start: int = month, after: Any = None) -> int:
        return len(page(store, filters, start, until, after))

    def hours(start: int) -> tuple[int, int]:
        return start // 3_600_000, until // 3_600_000

    def day(start: int) -> int:
        return int(summary(store, start, until, PARIS)["decisions"])

    def number(value: str, limit: int = 1000) -> int:
        return len(store.search_number(value, None, None, limit))

    return [
        ("number: a test line, 50 newest", lambda: number("+33612345678", 50)),
        ("number: a hot one, 50 newest", lambda: number(hot, 50)),
        ("number: long tail, all its records", lambda: number(tail)),
        ("Today: summary from the rollups", lambda: day(since)),
        ("Today: nodes (cursor, breaks)", lambda: len(store.nodes())),
        ("Today: each node's newest record", lambda: sum(len(newest(store, n)) for n in nodes)),
        ("Today: the whole page", lambda: today(store, since, until)),
        ("30 days of stats (rollups)", lambda: day(month)),
        ("  (before: each counter row fetched)", lambda: len(store.rollups(*hours(month)))),
        ("a decision by id (30 days old)", lambda: len(by_id(store, old))),
        ("a decision by id (today's)", lambda: len(by_id(store, new))),
        ("a decision by id and its ts", lambda: len(by_id_and_ts(store, old))),
        ("campaign+reason, 30 days: page 1", lambda: search(common)),
        ("  page 2 (keyset)", lambda: search(common, after=after_first)),
        ("  a page mid-range (keyset)", lambda: search(common, after=middle)),
        ("rare campaign+rare reason, 30 days",
         lambda: search({"campaign": "vins-grands-crus", "reason": "CONSENT_WITHDRAWN"})),
        ("campaign only, 30 days", lambda: search({"campaign": "banque-credit"})),
        ("reason only, 30 days", lambda: search({"reason": "RECENT_REFUSAL"})),
        ("result+node, 30 days", lambda: search({"result": "DENY", "node": "node-lyon"})),
        ("principal, 30 days", lambda: search({"principal": "CAVEAVIN"})),
        ("a rare reason, one day", lambda: search({"reason": "DEADLINE"}, since)),
        ("no filter, 30 days", lambda: search({})),
        # What nothing matches costs most: every candidate row is read to find none.
        ("none: a principal with no calls, 30 days", lambda: search({"principal": "NOBODY"})),
        ("none: campaign+reason that never meet",
         lambda: search({"campaign": "fibre-idf", "reason": "SECTOR_BAN"})),
        ("none: a node with no calls, 30 days", lambda: search({"node": "node-gone"})),
    ]  # fmt: skip


def plans(store: CentralStore, month: int, until: int) -> None:
    explain = "EXPLAIN QUERY PLAN "
    if store.backend == "postgresql":
        explain = "EXPLAIN (ANALYZE, BUFFERS) "
    columns = "SELECT node, id, ts, line FROM records WHERE "
    order = f" AND ts >= ? AND ts < ? ORDER BY ts DESC, id DESC LIMIT {PAGE}"  # page 1
    for label, query, args in (
        ("campaign+reason", "campaign = ? AND reason = ?", ("vins-grands-crus", "CONSENT_EXPIRED")),
        ("principal", "principal = ?", ("CAVEAVIN",)),
        ("result+node", "result = ? AND node = ?", ("DENY", "node-lyon")),
    ):  # fmt: skip
        print(f"-- {label}")
        for row in sql(store, explain + columns + query + order, (*args, month, until)):
            print("   ", " ".join(str(part) for part in row))


def migrate_store(backend: str, directory: Path) -> None:
    """`central migrate` on the big store: how long a new version's steps take there."""
    with opened(backend, directory) as store:
        before = store.version()
        began = time.perf_counter()
        version, applied = store.migrate()
        print(f"migrate {backend}: version {before} -> {version} (applied {applied}) in"
              f" {time.perf_counter() - began:.1f} s")  # fmt: skip
        if backend == "postgresql":
            sql_autocommit(store, "ANALYZE")
        sizes(store, directory)


def prune_store(backend: str, directory: Path, before: date) -> None:
    """`central prune` of the months before `before`, then `audit verify --central`."""
    with opened(backend, directory) as store:
        store.migrate()
        sizes(store, directory)
        began = time.perf_counter()
        pruning = store.prune(day_number(before), int(time.time() * 1000))
        elapsed = time.perf_counter() - began
        removed = sum(item.records for item in pruning.nodes)
        print(f"prune {backend}: {removed:,} records before {before} removed in {elapsed:.1f} s"
              f" (dropped: {', '.join(pruning.dropped) or '-'})")  # fmt: skip
        sizes(store, directory)
        for cursor in store.nodes():
            began = time.perf_counter()
            result = verify_node(store, cursor.node)
            print(f"verify: {result.summary()} in {time.perf_counter() - began:.0f} s", flush=True)
