"""The central store in PostgreSQL (psycopg 3): several nodes, one database.

`records` is partitioned by month of `ts` (declarative partitioning): a month's records
are one table, so retention drops a month whole and a search within dates reads only its
months. The shipper makes a month's partition the first time a record needs it (under an
advisory lock, in its own transaction, so two nodes making it at once do not collide).

A batch: its rows are copied (COPY, binary) into a temporary table, then one statement
inserts them into `records`, skipping ids already stored (ON CONFLICT DO NOTHING), and
adds the rows it did insert, and only those, to the rollup counters (a data-modifying
WITH: RETURNING feeds the counts). The node's cursor row is locked first (SELECT ... FOR
UPDATE): two shippers of one node take turns, and the second finds the cursor moved.

The password: in the URL (shown as *** in every message), from `[central]
password_file` or DIALGUARD_CENTRAL_PASSWORD (passed to libpq, never in the URL), or
libpq's own PGPASSWORD and ~/.pgpass. Messages from the driver are scrubbed of it too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql

from dialguard.audit.files import day_name, day_of
from dialguard.central import migrate
from dialguard.central.errors import CentralUnavailable, CursorMoved
from dialguard.central.retention import day_number
from dialguard.central.store import (
    CLASH,
    ROW_COLUMNS,
    Break,
    CentralStore,
    Cursor,
    Filters,
    Found,
    Ingested,
    Position,
    Pruned,
    Pruning,
    RollupRow,
    Row,
    events_query,
    export_query,
    rollup_filter,
    search_query,
)
from dialguard.config import redact_url

__all__ = ["PostgresStore", "month_bounds"]

CONNECT_TIMEOUT_S = 10
# A prune waits this long for a long query on `records` (an export, `audit verify
# --central`) before it gives up and says so: meanwhile every other query waits behind it.
PRUNE_LOCK_TIMEOUT = "10s"
_MONTH = re.compile(r"records_(\d{4})_(\d{2})")
_LOCK_MIGRATE = 0x64676D31  # pg_advisory_xact_lock keys: "dgm1", "dgp1"
_LOCK_PARTITION = 0x64677031

_STAGING = b"""
CREATE TEMPORARY TABLE staging (
    id text, ts bigint, file_day integer, file_offset bigint, kind text, result text,
    reason text, outcome text, number text, campaign text, principal text, shadowed boolean,
    degraded boolean, hash text, prev text, line bytea
) ON COMMIT DELETE ROWS
"""
_STAGING_TYPES = [
    "text", "int8", "int4", "int8", "text", "text", "text", "text", "text", "text", "text",
    "bool", "bool", "text", "text", "bytea",
]  # fmt: skip
_COLUMNS = ", ".join(ROW_COLUMNS)
_INSERT = f"""
WITH inserted AS (
    INSERT INTO records (node, {_COLUMNS}, shipped_at)
    SELECT %(node)s, {_COLUMNS}, %(shipped_at)s FROM staging
    ON CONFLICT DO NOTHING
    RETURNING ts, kind, campaign, result, reason, outcome, shadowed, degraded
), counted AS (
    INSERT INTO rollups AS r (hour, node, kind, campaign, result, reason, n, shadowed, degraded)
    SELECT (ts / 3600000)::integer, %(node)s, kind, coalesce(campaign, ''),
           coalesce(result, ''), coalesce(reason, outcome, ''), count(*),
           count(*) FILTER (WHERE shadowed), count(*) FILTER (WHERE degraded)
    FROM inserted GROUP BY 1, 3, 4, 5, 6
    ON CONFLICT (hour, node, kind, campaign, result, reason)
    DO UPDATE SET n = r.n + excluded.n, shadowed = r.shadowed + excluded.shadowed,
                  degraded = r.degraded + excluded.degraded
)
SELECT count(*) FROM inserted
""".encode()
# After an insert that skipped rows: those whose id is stored with other bytes (a clash).
_CLASHES = b"""
SELECT s.id, s.file_day, s.file_offset FROM staging s
WHERE EXISTS (SELECT 1 FROM records r WHERE r.id = s.id AND r.hash <> s.hash)
"""
_COPY = f"COPY staging ({_COLUMNS}) FROM STDIN (FORMAT BINARY)".encode()
_CURSOR = """
SELECT node, file, file_offset, last_hash, start_hash, records, shipped_at, error,
       (SELECT count(*) FROM chain_breaks b WHERE b.node = c.node)
FROM cursors c
"""


def _month_of(name: str) -> tuple[str, int, int] | None:
    """The bounds of a partition this store made (records_YYYY_MM); None for another."""
    match = _MONTH.fullmatch(name)
    if match is None:
        return None
    first = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
    return month_bounds(int(first.timestamp() * 1000))


def month_bounds(ts_ms: int) -> tuple[str, int, int]:
    """The partition of a record's month: its name and [start, end) in ms, UTC."""
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    name = f"records_{moment.year:04d}_{moment.month:02d}"
    return name, int(start.timestamp() * 1000), int(end.timestamp() * 1000)


class PostgresStore(CentralStore):
    backend = "postgresql"
    mark = "%s"

    def __init__(self, url: str, password: str | None = None) -> None:
        self.shown = redact_url(url)
        self._secrets = [s for s in (password, _url_password(url)) if s]
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "dialguard",
        }
        if password:
            options["password"] = password  # to libpq, never into a URL that is shown
        try:
            # Autocommit: every statement group below is an explicit transaction() block.
            self.db = psycopg.connect(url, autocommit=True, **options)
            # The batches' staging table: this session's own, emptied at each commit.
            self.db.execute(_STAGING)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        self._partitions: set[str] = set()

    def _unavailable(self, exc: BaseException) -> CentralUnavailable:
        detail = " ".join(str(exc).split())
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return CentralUnavailable(f"{self.shown}: central store: {detail[:300]}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                self.db.rollback()
            raise self._unavailable(exc) from None

    # --- schema ---------------------------------------------------------------------------

    def version(self) -> int:
        with self._errors(), self.db.transaction():
            found = self.db.execute("SELECT to_regclass('schema_version')").fetchone()
            if found is None or found[0] is None:
                return 0
            row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0) if row else 0

    def migrate(self) -> tuple[int, list[int]]:
        applied: list[int] = []
        with self._errors(), self.db.transaction():
            # One migrate at a time across every node; the others then find nothing to do.
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_MIGRATE,))
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = int(row[0] or 0) if row else 0
            migrate.check_known(current, self.shown)
            for step in migrate.pending(current):
                for statement in step.postgres:
                    self.db.execute(statement.encode())
                self.db.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (step.version, step.name),
                )
                applied.append(step.version)
                current = step.version
        return current, applied

    def _ensure_partitions(self, rows: Sequence[Row]) -> None:
        months = {month_bounds(row.ts) for row in rows}
        missing = {m for m in months if m[0] not in self._partitions}
        if not missing:
            return
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_PARTITION,))
            self._make_partitions(missing)

    def _make_partitions(self, months: set[tuple[str, int, int]]) -> None:
        for name, start, end in sorted(months):
            self.db.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF records"
                    " FOR VALUES FROM ({}) TO ({})"
                ).format(sql.Identifier(name), sql.Literal(start), sql.Literal(end))
            )
        self._partitions.update(m[0] for m in months)

    # --- shipping -------------------------------------------------------------------------

    def cursor(self, node: str) -> Cursor | None:
        with self._errors(), self.db.transaction():
            row = self.db.execute((_CURSOR + " WHERE node = %s").encode(), (node,)).fetchone()
        return None if row is None else _cursor(row)

    def nodes(self) -> list[Cursor]:
        with self._errors(), self.db.transaction():
            rows = self.db.execute((_CURSOR + " ORDER BY node").encode()).fetchall()
        return [_cursor(row) for row in rows]

    def ingest(
        self,
        node: str,
        since: Position | None,
        start_hash: str,
        rows: Sequence[Row],
        breaks: Sequence[Break],
        position: Position,
        shipped_at: int,
    ) -> Ingested:
        with self._errors():
            self._ensure_partitions(rows)
            with self.db.transaction(), self.db.cursor() as cur:
                found = cur.execute(
                    "SELECT file, file_offset, last_hash FROM cursors WHERE node = %s FOR UPDATE",
                    (node,),
                ).fetchone()
                if found is None:
                    # The node's first batch: the row is made now, and a second shipper
                    # making it at the same time waits for ours, then finds it taken.
                    made = cur.execute(
                        "INSERT INTO cursors (node, file, file_offset, last_hash, start_hash,"
                        " records, shipped_at) VALUES (%s, '', 0, '', %s, 0, 0)"
                        " ON CONFLICT DO NOTHING RETURNING node",
                        (node, start_hash),
                    ).fetchone()
                    if made is None or since is not None:
                        raise CursorMoved(node)
                elif Position(found[0], found[1], found[2]) != since:
                    raise CursorMoved(node)
                with cur.copy(_COPY) as copy:
                    copy.set_types(_STAGING_TYPES)
                    for row in rows:
                        copy.write_row(row)
                counted = cur.execute(_INSERT, {"node": node, "shipped_at": shipped_at}).fetchone()
                stored = int(counted[0]) if counted else 0
                clashes: list[Break] = []
                if stored < len(rows):
                    for record_id, file_day, offset in cur.execute(_CLASHES).fetchall():
                        clashes.append(Break(record_id, day_name(file_day), offset, CLASH))
                flagged = [*breaks, *clashes]
                if flagged:
                    cur.executemany(
                        "INSERT INTO chain_breaks (node, record_id, file, file_offset, problem,"
                        " detected_at) VALUES (%s, %s, %s, %s, %s, %s)",
                        [
                            (node, b.record_id, b.file, b.offset, b.problem, shipped_at)
                            for b in flagged
                        ],
                    )
                cur.execute(
                    "UPDATE cursors SET file = %s, file_offset = %s, last_hash = %s,"
                    " records = records + %s, shipped_at = %s, error = '' WHERE node = %s",
                    (
                        position.file,
                        position.offset,
                        position.last_hash,
                        stored,
                        shipped_at,
                        node,
                    ),
                )
        # A clash with another ts was stored all the same (the key is (id, ts)): flagged.
        return Ingested(stored, max(0, len(rows) - stored - len(clashes)), flagged)

    def note_error(self, node: str, error: str) -> None:
        with self._errors(), self.db.transaction():
            self.db.execute("UPDATE cursors SET error = %s WHERE node = %s", (error, node))

    # --- retention ------------------------------------------------------------------------

    def prune(self, before_day: int, pruned_at: int, dry_run: bool = False) -> Pruning:
        """One transaction: the months before `before_day` dropped whole, after the few
        records of theirs that sit in a kept journal file were set aside (a record stamped
        just before midnight and written after it) and are put back; each node's cursor and
        its row in `prunes` first (the cursors are the rows every shipper locks first: taken
        in that order, a prune and a shipper never deadlock)."""
        cutoff = before_day * 86_400_000
        with self._errors(), self.db.transaction(), self.db.cursor() as cur:
            if not dry_run:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_PARTITION,))
            months = [
                (name, bounds[2])
                for (name,) in cur.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'records'::regclass ORDER BY 1"
                ).fetchall()
                if (bounds := _month_of(name)) is not None
            ]
            # A month before the cutoff holding only records of kept files (put back by
            # an earlier prune) stays: nothing in it is to go.
            doomed = [
                name
                for name, end in months
                if end <= cutoff
                and cur.execute(
                    sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE file_day < %s)").format(
                        sql.Identifier(name)
                    ),
                    (before_day,),
                ).fetchone()
                == (True,)
            ]
            found = []
            nodes = cur.execute("SELECT node FROM cursors ORDER BY node").fetchall()
            for (node,) in nodes:
                (count,) = cur.execute(
                    "SELECT count(*) FROM records WHERE node = %s AND file_day < %s",
                    (node, before_day),
                ).fetchone() or (0,)
                if not count:
                    continue
                last = cur.execute(
                    "SELECT file_day, file_offset, hash FROM records WHERE node = %s"
                    " AND file_day < %s ORDER BY file_day DESC, file_offset DESC LIMIT 1",
                    (node, before_day),
                ).fetchone()
                assert last is not None
                found.append(
                    Pruned(node, day_name(before_day), int(count), day_name(last[0]), last[1],
                           last[2], pruned_at)
                )  # fmt: skip
            if dry_run:
                return Pruning(found, doomed)
            cur.execute(f"SET LOCAL lock_timeout = '{PRUNE_LOCK_TIMEOUT}'".encode())
            for item in found:
                cur.execute(
                    "UPDATE cursors SET start_hash = %s, records = records - %s WHERE node = %s",
                    (item.last_hash, item.records, item.node),
                )
                cur.execute(
                    "INSERT INTO prunes (node, before_day, records, last_day, last_offset,"
                    " last_hash, pruned_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (item.node, before_day, item.records, day_number(day_of(item.last_file)),
                     item.last_offset, item.last_hash, pruned_at),
                )  # fmt: skip
            if doomed:
                # Records of a dropped month that belong to a kept journal file: found by
                # node through the chain index, a handful at most.
                cur.execute(b"CREATE TEMPORARY TABLE prune_kept (LIKE records) ON COMMIT DROP")
                for (node,) in nodes:
                    cur.execute(
                        "INSERT INTO prune_kept SELECT * FROM records WHERE node = %s"
                        " AND file_day >= %s AND ts < %s",
                        (node, before_day, cutoff),
                    )
                for name in doomed:
                    cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                self._partitions.difference_update(doomed)
                kept = [row[0] for row in cur.execute(b"SELECT ts FROM prune_kept").fetchall()]
                if kept:
                    self._make_partitions({month_bounds(ts) for ts in kept})
                    cur.execute(b"INSERT INTO records SELECT * FROM prune_kept")
            for item in found:  # those of a kept month (none from a journal the writer wrote)
                cur.execute(
                    "DELETE FROM records WHERE node = %s AND file_day < %s", (item.node, before_day)
                )
        return Pruning(found, doomed)

    def pruned(self, node: str) -> Pruned | None:
        with self._errors(), self.db.transaction():
            row = self.db.execute(
                "SELECT before_day, last_day, last_offset, last_hash, pruned_at,"
                " (SELECT sum(records) FROM prunes WHERE node = %s)"
                " FROM prunes WHERE node = %s ORDER BY id DESC LIMIT 1",
                (node, node),
            ).fetchone()
        return None if row is None else Pruned.of_row(node, row)

    # --- reading --------------------------------------------------------------------------

    def chain(self, node: str) -> Iterator[tuple[int, int, str, bytes]]:
        # A server-side cursor: millions of rows, a few thousand in memory at a time.
        with self._errors(), self.db.transaction(), self.db.cursor(name="chain") as cur:
            cur.itersize = 2000
            cur.execute(
                "SELECT file_day, file_offset, id, line FROM records WHERE node = %s"
                " ORDER BY node, file_day, file_offset",
                (node,),
            )
            for file_day, offset, record_id, line in cur:
                yield file_day, offset, record_id, bytes(line)

    def breaks(self, node: str, limit: int = 100) -> list[Break]:
        with self._errors(), self.db.transaction():
            rows = self.db.execute(
                "SELECT record_id, file, file_offset, problem FROM chain_breaks"
                " WHERE node = %s ORDER BY id LIMIT %s",
                (node, limit),
            ).fetchall()
        return [Break(*row) for row in rows]

    def rollups(
        self,
        since_hour: int | None,
        until_hour: int | None,
        campaign: str | None = None,
        node: str | None = None,
    ) -> list[RollupRow]:
        where, args = rollup_filter(since_hour, until_hour, campaign, node, "%s")
        query = (
            "SELECT hour, node, kind, campaign, result, reason, n, shadowed, degraded FROM rollups"
        )
        with self._errors(), self.db.transaction():
            rows = self.db.execute((query + where).encode(), args).fetchall()
        return [RollupRow(*row) for row in rows]

    def _select(self, query: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._errors(), self.db.transaction():
            return list(self.db.execute(query.encode(), args).fetchall())

    def search_number(
        self, number: str, since_ms: int | None, until_ms: int | None, limit: int = 1000
    ) -> list[Found]:
        query = "SELECT node, id, ts, line FROM records WHERE number = %s"
        args: list[Any] = [number]
        if since_ms is not None:
            query += " AND ts >= %s"
            args.append(since_ms)
        if until_ms is not None:
            query += " AND ts < %s"
            args.append(until_ms)
        query += " ORDER BY ts DESC LIMIT %s"
        with self._errors(), self.db.transaction():
            rows = self.db.execute(query.encode(), (*args, limit)).fetchall()
        return [Found(row[0], row[1], row[2], bytes(row[3])) for row in rows]

    def search(
        self,
        filters: Filters,
        newest_first: bool = True,
        after: tuple[int, str] | None = None,
        limit: int = 50,
    ) -> list[Found]:
        query, args = search_query(filters, newest_first, after, limit, "%s")
        return self._found(query, args)

    def record(self, record_id: str) -> Found | None:
        # The key is (id, ts): id leads it, so each month's partition answers from its
        # index (a few partitions, a lookup each).
        found = self._found("SELECT node, id, ts, line FROM records WHERE id = %s", [record_id])
        return found[0] if found else None

    def last_shipped(self, node: str) -> int | None:
        query = (
            b"SELECT ts FROM records WHERE node = %s"
            b" ORDER BY node DESC, file_day DESC, file_offset DESC LIMIT 1"
        )
        with self._errors(), self.db.transaction():
            row = self.db.execute(query, (node,)).fetchone()
        return None if row is None else int(row[0])

    def events(self, since_ms: int, kinds: Sequence[str]) -> list[Found]:
        query, args = events_query(since_ms, kinds, "%s")
        return self._found(query, args)

    def export(self, filters: Filters) -> Iterator[Found]:
        query, args = export_query(filters, "%s")
        # A server-side cursor: an export of millions, a few thousand rows in memory.
        with self._errors(), self.db.transaction(), self.db.cursor(name="export") as cur:
            cur.itersize = 2000
            cur.execute(query.encode(), args)
            for node, record_id, ts, line in cur:
                yield Found(node, record_id, ts, bytes(line))

    def _found(self, query: str, args: Sequence[Any]) -> list[Found]:
        with self._errors(), self.db.transaction():
            rows = self.db.execute(query.encode(), args).fetchall()
        return [Found(row[0], row[1], row[2], bytes(row[3])) for row in rows]

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.db.close()


def _url_password(url: str) -> str:
    try:
        secret = urlsplit(url).password
    except ValueError:
        return ""
    return unquote(secret) if secret else ""


def _cursor(row: Sequence[Any]) -> Cursor:
    return Cursor(
        node=row[0],
        position=Position(row[1], int(row[2]), row[3]),
        start_hash=row[4],
        records=int(row[5]),
        shipped_at=int(row[6]),
        error=row[7],
        breaks=int(row[8]),
    )
