"""The central store in a SQLite file: the embedded default (no server to run).

WAL mode, `synchronous=NORMAL`: a committed batch survives a crash of the process; a
power cut may take the last batches back, cursor and records together, and the shipper
then sends them again from the journal. The file (and its -wal and -shm, which SQLite
creates with the same mode) is 0600: it holds the journal's personal data.

Several processes may write one file (two nodes on one machine, `audit ship` beside
`serve`): each batch takes the write lock with BEGIN IMMEDIATE, and a busy file is waited
for (`busy_timeout`) rather than failed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dialguard.audit.files import day_name
from dialguard.central import migrate
from dialguard.central.errors import CentralUnavailable, CursorMoved
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
    rollup_key,
    search_query,
)

__all__ = ["SqliteStore"]

BUSY_TIMEOUT_MS = 30_000  # another writer's batch takes milliseconds; a stuck one, not 30 s
_CHUNK = 500  # ids per `IN (...)` (well under SQLite's limit on variables)
# A prune deletes this many records a transaction (a fraction of a second: a shipper's
# batch waits no longer), then pauses so that one can take the file's write lock.
PRUNE_BATCH = 5000
PRUNE_PAUSE_S = 0.02

_COLUMNS = ", ".join(("node", *ROW_COLUMNS, "shipped_at"))
_INSERT = f"INSERT INTO records ({_COLUMNS}) VALUES ({', '.join('?' * (len(ROW_COLUMNS) + 2))})"
_INSERT_OR_IGNORE = _INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO")
_ROLLUP = """
INSERT INTO rollups (hour, node, kind, campaign, result, reason, n, shadowed, degraded)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, node, kind, campaign, result, reason)
DO UPDATE SET n = n + excluded.n, shadowed = shadowed + excluded.shadowed,
              degraded = degraded + excluded.degraded
"""
_CURSOR = """
SELECT node, file, file_offset, last_hash, start_hash, records, shipped_at, error,
       (SELECT count(*) FROM chain_breaks b WHERE b.node = c.node)
FROM cursors c
"""


class SqliteStore(CentralStore):
    backend = "sqlite"
    mark = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shown = str(path)
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # Made 0600 before SQLite opens it: it holds personal data.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> CentralUnavailable:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return CentralUnavailable(f"{self.shown}: central store: {detail}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (the write lock at once: no upgrade deadlock), then COMMIT, or
        ROLLBACK on any error."""
        with self._errors():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # --- schema ---------------------------------------------------------------------------

    def version(self) -> int:
        with self._errors():
            exists = self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            if not exists:
                return 0
            value = self.db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        return int(value or 0)

    def migrate(self) -> tuple[int, list[int]]:
        applied: list[int] = []
        with self._transaction() as db:  # the write lock: a second migrate waits here
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)"
            )
            current = int(db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)
            migrate.check_known(current, self.shown)
            for step in migrate.pending(current):
                for statement in step.sqlite:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (step.version, step.name, int(time.time() * 1000)),
                )
                applied.append(step.version)
                current = step.version
        return current, applied

    # --- shipping -------------------------------------------------------------------------

    def cursor(self, node: str) -> Cursor | None:
        with self._errors():
            row = self.db.execute(_CURSOR + " WHERE node = ?", (node,)).fetchone()
        return None if row is None else _cursor(row)

    def nodes(self) -> list[Cursor]:
        with self._errors():
            return [_cursor(row) for row in self.db.execute(_CURSOR + " ORDER BY node")]

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
        with self._transaction() as db:
            found = db.execute(
                "SELECT file, file_offset, last_hash FROM cursors WHERE node = ?", (node,)
            ).fetchone()
            now = None if found is None else Position(found[0], found[1], found[2])
            if now != since:
                raise CursorMoved(node)
            values = [(node, *row, shipped_at) for row in rows]
            db.execute("SAVEPOINT rows")
            before = db.total_changes
            db.executemany(_INSERT_OR_IGNORE, values)
            if db.total_changes - before == len(values):
                fresh, duplicates, clashes = list(rows), 0, list[Break]()
            else:  # some ids are stored already: rare, so looked at only then
                db.execute("ROLLBACK TO rows")
                fresh, duplicates, clashes = self._sort_out(rows)
                db.executemany(_INSERT, [(node, *row, shipped_at) for row in fresh])
            counts: Counter[tuple[int, str, str, str, str, str]] = Counter()
            shadowed: Counter[tuple[int, str, str, str, str, str]] = Counter()
            degraded: Counter[tuple[int, str, str, str, str, str]] = Counter()
            for row in fresh:
                key = rollup_key(node, row)
                counts[key] += 1
                if row.shadowed:
                    shadowed[key] += 1
                if row.degraded:
                    degraded[key] += 1
            db.execute("RELEASE rows")
            db.executemany(
                _ROLLUP, [(*key, n, shadowed[key], degraded[key]) for key, n in counts.items()]
            )
            flagged = [*breaks, *clashes]
            db.executemany(
                "INSERT INTO chain_breaks (node, record_id, file, file_offset, problem,"
                " detected_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(node, b.record_id, b.file, b.offset, b.problem, shipped_at) for b in flagged],
            )
            db.execute(
                """INSERT INTO cursors (node, file, file_offset, last_hash, start_hash, records,
                   shipped_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, '')
                   ON CONFLICT (node) DO UPDATE SET file = excluded.file,
                   file_offset = excluded.file_offset, last_hash = excluded.last_hash,
                   records = records + excluded.records, shipped_at = excluded.shipped_at,
                   error = ''""",
                (
                    node,
                    position.file,
                    position.offset,
                    position.last_hash,
                    start_hash,
                    len(fresh),
                    shipped_at,
                ),
            )
        return Ingested(len(fresh), duplicates, flagged)

    def _sort_out(self, rows: Sequence[Row]) -> tuple[list[Row], int, list[Break]]:
        """The rows not stored yet; how many were (with the same hash); a break for each
        stored with other bytes (an id that is not unique: never silently dropped)."""
        stored: dict[str, str] = {}
        ids = [row.id for row in rows]
        for at in range(0, len(ids), _CHUNK):
            chunk = ids[at : at + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT id, hash FROM records WHERE id IN ({marks})"
            stored.update(self.db.execute(query, chunk).fetchall())
        fresh: list[Row] = []
        duplicates = 0
        clashes: list[Break] = []
        for row in rows:
            known = stored.get(row.id)
            if known is None:
                stored[row.id] = row.hash
                fresh.append(row)
            elif known == row.hash:
                duplicates += 1
            else:
                clashes.append(Break(row.id, day_name(row.file_day), row.file_offset, CLASH))
        return fresh, duplicates, clashes

    def note_error(self, node: str, error: str) -> None:
        with self._errors():
            self.db.execute("UPDATE cursors SET error = ? WHERE node = ?", (error, node))

    # --- retention ------------------------------------------------------------------------

    def prune(self, before_day: int, pruned_at: int, dry_run: bool = False) -> Pruning:
        """Node by node, PRUNE_BATCH records at a time from the start of its chain, each
        batch one transaction with the cursor's new start and the node's `prunes` row: a
        prune stopped half-way leaves a shorter chain that still verifies."""
        found: list[Pruned] = []
        with self._errors():
            nodes = [row[0] for row in self.db.execute("SELECT node FROM cursors ORDER BY node")]
        for node in nodes:
            done = self._prune_node(node, before_day, pruned_at, dry_run)
            if done is not None:
                found.append(done)
        return Pruning(found, [])

    def _prune_node(
        self, node: str, before_day: int, pruned_at: int, dry_run: bool
    ) -> Pruned | None:
        chain = "FROM records WHERE node = ? AND file_day < ? ORDER BY file_day, file_offset"
        last_first = chain.replace("file_day, file_offset", "file_day DESC, file_offset DESC")
        select = "SELECT file_day, file_offset, hash "
        if dry_run:
            with self._errors():
                count = self.db.execute(
                    "SELECT count(*) FROM records WHERE node = ? AND file_day < ?",
                    (node, before_day),
                ).fetchone()[0]
                last = self.db.execute(select + last_first + " LIMIT 1", (node, before_day))
                edge = last.fetchone()
            if not count:
                return None
            return Pruned(node, day_name(before_day), count, day_name(edge[0]), edge[1], edge[2],
                          pruned_at)  # fmt: skip
        removed = 0
        edge = None
        prune_id = None
        while True:
            with self._transaction() as db:
                # The batch's last record: the PRUNE_BATCH-th in chain order, or the last.
                nth = (node, before_day, PRUNE_BATCH - 1)
                step = (
                    db.execute(select + chain + " LIMIT 1 OFFSET ?", nth).fetchone()
                    or db.execute(select + last_first + " LIMIT 1", nth[:2]).fetchone()
                )
                if step is None:
                    break
                edge = step
                deleted = db.execute(
                    "DELETE FROM records WHERE node = ? AND file_day < ?"
                    " AND (file_day, file_offset) <= (?, ?)",
                    (node, before_day, edge[0], edge[1]),
                ).rowcount
                removed += deleted
                db.execute(
                    "UPDATE cursors SET start_hash = ?, records = records - ? WHERE node = ?",
                    (edge[2], deleted, node),
                )
                if prune_id is None:
                    prune_id = db.execute(
                        "INSERT INTO prunes (node, before_day, records, last_day, last_offset,"
                        " last_hash, pruned_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (node, before_day, deleted, edge[0], edge[1], edge[2], pruned_at),
                    ).lastrowid
                else:
                    db.execute(
                        "UPDATE prunes SET records = records + ?, last_day = ?, last_offset = ?,"
                        " last_hash = ? WHERE id = ?",
                        (deleted, edge[0], edge[1], edge[2], prune_id),
                    )
            _between_batches()
        if edge is None:
            return None
        return Pruned(node, day_name(before_day), removed, day_name(edge[0]), edge[1], edge[2],
                      pruned_at)  # fmt: skip

    def pruned(self, node: str) -> Pruned | None:
        with self._errors():
            row = self.db.execute(
                "SELECT before_day, last_day, last_offset, last_hash, pruned_at,"
                " (SELECT sum(records) FROM prunes WHERE node = ?)"
                " FROM prunes WHERE node = ? ORDER BY id DESC LIMIT 1",
                (node, node),
            ).fetchone()
        return None if row is None else Pruned.of_row(node, row)

    # --- reading --------------------------------------------------------------------------

    def chain(self, node: str) -> Iterator[tuple[int, int, str, bytes]]:
        with self._errors():
            query = (
                "SELECT file_day, file_offset, id, line FROM records WHERE node = ?"
                " ORDER BY file_day, file_offset"
            )
            for row in self.db.execute(query, (node,)):
                yield row[0], row[1], row[2], _bytes(row[3])

    def breaks(self, node: str, limit: int = 100) -> list[Break]:
        with self._errors():
            rows = self.db.execute(
                "SELECT record_id, file, file_offset, problem FROM chain_breaks WHERE node = ?"
                " ORDER BY id LIMIT ?",
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
        where, args = rollup_filter(since_hour, until_hour, campaign, node, "?")
        with self._errors():
            rows = self.db.execute(
                "SELECT hour, node, kind, campaign, result, reason, n, shadowed, degraded"
                " FROM rollups" + where,
                args,
            ).fetchall()
        return [RollupRow(*row) for row in rows]

    def _select(self, query: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._errors():
            return list(self.db.execute(query, args).fetchall())

    def search_number(
        self, number: str, since_ms: int | None, until_ms: int | None, limit: int = 1000
    ) -> list[Found]:
        query = "SELECT node, id, ts, line FROM records WHERE number = ?"
        args: list[Any] = [number]
        if since_ms is not None:
            query += " AND ts >= ?"
            args.append(since_ms)
        if until_ms is not None:
            query += " AND ts < ?"
            args.append(until_ms)
        with self._errors():
            rows = self.db.execute(query + " ORDER BY ts DESC LIMIT ?", (*args, limit)).fetchall()
        return [Found(row[0], row[1], row[2], _bytes(row[3])) for row in rows]

    def search(
        self,
        filters: Filters,
        newest_first: bool = True,
        after: tuple[int, str] | None = None,
        limit: int = 50,
    ) -> list[Found]:
        query, args = search_query(filters, newest_first, after, limit, "?")
        return self._found(query, args)

    def record(self, record_id: str) -> Found | None:
        found = self._found("SELECT node, id, ts, line FROM records WHERE id = ?", [record_id])
        return found[0] if found else None

    def last_shipped(self, node: str) -> int | None:
        query = (
            "SELECT ts FROM records WHERE node = ? ORDER BY file_day DESC, file_offset DESC LIMIT 1"
        )
        with self._errors():
            row = self.db.execute(query, (node,)).fetchone()
        return None if row is None else int(row[0])

    def events(self, since_ms: int, kinds: Sequence[str]) -> list[Found]:
        query, args = events_query(since_ms, kinds, "?")
        return self._found(query, args)

    def export(self, filters: Filters) -> Iterator[Found]:
        query, args = export_query(filters, "?")
        with self._errors():
            for row in self.db.execute(query, args):
                yield Found(row[0], row[1], row[2], _bytes(row[3]))

    def _found(self, query: str, args: Sequence[Any]) -> list[Found]:
        with self._errors():
            rows = self.db.execute(query, args).fetchall()
        return [Found(row[0], row[1], row[2], _bytes(row[3])) for row in rows]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


def _between_batches() -> None:
    time.sleep(PRUNE_PAUSE_S)


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


def _bytes(value: object) -> bytes:
    """A stored line: a blob as written, or text if someone rewrote it with SQL (SQLite
    gives text back from replace() on a blob): its UTF-8 bytes, checked all the same."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()
