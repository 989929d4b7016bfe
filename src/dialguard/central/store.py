"""The central store's interface: what the shipper writes and the readers ask.

One table of records (the journal lines as they were, with the fields searches need in
columns), rollup counters per UTC hour, one cursor per node, the chain breaks found at
ingest, and the schema's version (docs/central.md has the schema). Two backends:
`sqlite.SqliteStore` (a file, the standard library) and `postgres.PostgresStore`
(psycopg 3); `connect.open_store` picks one from the configuration.

Each batch is one transaction: the records, their rollup counts, the breaks found in them
and the node's new cursor commit together or not at all. A shipper killed mid-batch
therefore leaves the store as it was before the batch, and the next one re-reads the
batch from the cursor: at least once from the journal's side, exactly once in the store.
Records are also unique by id (a record shipped twice, say from a copy of the journal, is
stored once and counted once).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dialguard.audit.files import day_name

__all__ = [
    "CLASH",
    "ROLLUP_COUNTS",
    "ROLLUP_GROUPS",
    "ROW_COLUMNS",
    "Break",
    "CentralStore",
    "Cursor",
    "Filters",
    "Found",
    "Ingested",
    "Position",
    "Pruned",
    "Pruning",
    "RollupRow",
    "Row",
    "events_query",
    "export_query",
    "hour_of",
    "record_filter",
    "rollup_filter",
    "rollup_key",
    "search_query",
]


class Row(NamedTuple):
    """One journal record as stored; the column order of the `records` table (but `node`
    and `shipped_at`, which the batch gives)."""

    id: str
    ts: int  # ms since the epoch, UTC: the record's own `ts`
    file_day: int  # the journal file it came from, as days since the epoch (its UTC day)
    file_offset: int  # the line's byte offset in that file: (file_day, file_offset) is chain order
    kind: str  # "decision" when the record has no `kind` (as the readers take it)
    result: str | None
    reason: str | None
    outcome: str | None  # an outcome record's `outcome` (refused, do-not-call)
    number: str | None
    campaign: str | None
    principal: str | None
    shadowed: bool  # a denial answered ALLOW in shadow mode (`answer` in the record)
    degraded: bool  # a decision the fail mode took (`degraded` set: Redis or the deadline)
    hash: str
    prev: str
    line: bytes  # the journal line, without its newline: what the hash covers


ROW_COLUMNS = Row._fields


@dataclass(frozen=True, slots=True)
class Position:
    """Where a node's shipping stands: the next byte to read, and the chain's last hash."""

    file: str  # a journal file name (audit-YYYY-MM-DD.jsonl)
    offset: int
    last_hash: str  # of the last line shipped ("" if it was not hash-chained)


@dataclass(frozen=True, slots=True)
class Cursor:
    """A node's row of `cursors`: its position, where its chain started, and its state."""

    node: str
    position: Position
    start_hash: str  # the `prev` the node's first record must have (zeros, or audit.start)
    records: int  # records stored for the node
    shipped_at: int  # ms, the last batch
    breaks: int  # chain breaks flagged for the node
    error: str  # why the last attempt to ship failed ("" once a batch goes in)


@dataclass(frozen=True, slots=True)
class Break:
    """A chain break found at ingest: the record was stored (if it could be read) and
    flagged, never silently accepted."""

    record_id: str  # "" when the line is not a record with an id
    file: str
    offset: int
    problem: str

    def __str__(self) -> str:
        named = f" (id {self.record_id})" if self.record_id else ""
        return f"{self.file} byte {self.offset}{named}: {self.problem}"


@dataclass(frozen=True, slots=True)
class Ingested:
    stored: int  # rows inserted
    duplicates: int  # rows already stored (same id, same hash): skipped, not counted again
    breaks: list[Break]  # flagged in this batch, including a duplicate id with other bytes


@dataclass(frozen=True, slots=True)
class Pruned:
    """A node's records removed by `central prune`: every one from the journal files
    before `before`, so that what is left is the node's chain from that file's first
    record on, which follows the last record removed (`last_hash`, now the cursor's
    `start_hash`: `audit verify --central` checks the rest from there)."""

    node: str
    before: str  # the first journal file kept (audit-YYYY-MM-DD.jsonl)
    records: int
    last_file: str  # the last record removed: its file, its byte offset, its hash
    last_offset: int
    last_hash: str
    pruned_at: int  # ms

    @classmethod
    def of_row(cls, node: str, row: Sequence[Any]) -> Pruned:
        """From the backends' query: the node's last `prunes` row (before_day, last_day,
        last_offset, last_hash, pruned_at) and the sum of its records."""
        before_day, last_day, last_offset, last_hash, pruned_at, records = row
        return cls(node, day_name(before_day), int(records), day_name(last_day), last_offset,
                   last_hash, pruned_at)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Pruning:
    nodes: list[Pruned]  # the nodes that had records to remove
    dropped: list[str]  # PostgreSQL: the monthly partitions dropped whole


class RollupRow(NamedTuple):
    hour: int  # hours since the epoch, UTC
    node: str
    kind: str
    campaign: str
    result: str
    reason: str  # a decision's reason, an outcome's outcome, "" otherwise
    n: int
    shadowed: int
    degraded: int


class Found(NamedTuple):
    """A record found by a search: where it came from and its line as stored."""

    node: str
    id: str
    ts: int
    line: bytes


@dataclass(frozen=True, slots=True)
class Filters:
    """What a search or an export selects; None (False) selects any. Each is a column of
    `records`, so a search is one query on its indexes."""

    since_ms: int | None = None  # inclusive
    until_ms: int | None = None  # exclusive
    number: str | None = None  # E.164, as normalised
    campaign: str | None = None
    principal: str | None = None
    result: str | None = None
    reason: str | None = None  # a decision's reason
    node: str | None = None
    kind: str | None = None
    degraded: bool = False  # only the decisions the fail mode took


def record_filter(filters: Filters, mark: str) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of a search and their arguments (`mark`: `?` or `%s`)."""
    clauses: list[str] = []
    args: list[Any] = []
    for clause, value in (
        (f"ts >= {mark}", filters.since_ms),
        (f"ts < {mark}", filters.until_ms),
        (f"number = {mark}", filters.number),
        (f"campaign = {mark}", filters.campaign),
        (f"principal = {mark}", filters.principal),
        (f"result = {mark}", filters.result),
        (f"reason = {mark}", filters.reason),
        (f"node = {mark}", filters.node),
        (f"kind = {mark}", filters.kind),
    ):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    if filters.degraded:
        clauses.append("degraded")
    return clauses, args


def search_query(
    filters: Filters, newest_first: bool, after: tuple[int, str] | None, limit: int, mark: str
) -> tuple[str, list[Any]]:
    """One page of a search, in time order (ts, then id: ids are unique), from `after`
    (the last row of the page before: keyset paging, so page 1,000 costs what page 1
    does). The bound is also written `ts <= t` alone, which every (column, ts) index
    serves as a range."""
    clauses, args = record_filter(filters, mark)
    if after is not None:
        ts, record_id = after
        if newest_first:
            clauses.append(f"ts <= {mark} AND (ts < {mark} OR id < {mark})")
        else:
            clauses.append(f"ts >= {mark} AND (ts > {mark} OR id > {mark})")
        args += [ts, ts, record_id]
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    order = "DESC" if newest_first else "ASC"
    query = (
        f"SELECT node, id, ts, line FROM records{where}"
        f" ORDER BY ts {order}, id {order} LIMIT {mark}"
    )
    return query, [*args, limit]


def export_query(filters: Filters, mark: str) -> tuple[str, list[Any]]:
    """The records of an export, each node's in its chain order (as `audit export` writes
    one journal: a node's records then verify link by link where nothing is filtered)."""
    clauses, args = record_filter(filters, mark)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return (
        f"SELECT node, id, ts, line FROM records{where} ORDER BY node, file_day, file_offset",
        args,
    )


def events_query(since_ms: int, kinds: Sequence[str], mark: str) -> tuple[str, list[Any]]:
    """Records of `kinds` since `since_ms`. `kind <> 'decision'` is the partial index's own
    predicate, written out so that both planners see the index applies."""
    if "decision" in kinds or not kinds:
        raise ValueError("events are the records that are not decisions")
    marks = ", ".join(mark for _ in kinds)
    return (
        "SELECT node, id, ts, line FROM records WHERE kind <> 'decision'"
        f" AND ts >= {mark} AND kind IN ({marks}) ORDER BY ts, id",
        [since_ms, *kinds],
    )


def hour_of(ts_ms: int) -> int:
    return ts_ms // 3_600_000


def rollup_key(node: str, row: Row) -> tuple[int, str, str, str, str, str]:
    """The rollup counter a record adds one to. UTC hours: every time zone in use is a
    whole number of hours from UTC, so the console re-buckets them into local days and
    hours exactly (Europe/Paris by default), whatever zone it shows."""
    reason = row.reason if row.reason is not None else row.outcome
    return (
        hour_of(row.ts),
        node,
        row.kind,
        row.campaign or "",
        row.result or "",
        reason or "",
    )


CLASH = "its id is stored already with other content: two records share an id"
# The columns rollup counters are summed by (`CentralStore.rollup_sums`), and the counters.
ROLLUP_GROUPS = frozenset(("hour", "node", "kind", "campaign", "result", "reason"))
ROLLUP_COUNTS = ("n", "shadowed", "degraded")


def rollup_filter(
    since_hour: int | None,
    until_hour: int | None,
    campaign: str | None,
    node: str | None,
    mark: str,
) -> tuple[str, list[Any]]:
    """The WHERE clause of a rollup query and its arguments (`mark`: the driver's `?`/`%s`)."""
    clauses: list[str] = []
    args: list[Any] = []
    for clause, value in (
        (f"hour >= {mark}", since_hour),
        (f"hour < {mark}", until_hour),
        (f"campaign = {mark}", campaign),
        (f"node = {mark}", node),
    ):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class CentralStore(abc.ABC):
    """A central store (SQLite or PostgreSQL). Every method raises CentralUnavailable
    (one line, no password) when the database cannot do it."""

    backend: str  # "sqlite" or "postgresql"
    shown: str  # where it is, for messages (no password)
    mark: str  # the driver's parameter mark

    @abc.abstractmethod
    def _select(self, query: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read-only query written with `mark`."""

    @abc.abstractmethod
    def migrate(self) -> tuple[int, list[int]]:
        """Bring the schema to the newest version; (version now, versions applied now).
        Idempotent; several processes may run it at once."""

    @abc.abstractmethod
    def version(self) -> int:
        """The schema version (0: never migrated)."""

    @abc.abstractmethod
    def cursor(self, node: str) -> Cursor | None: ...

    @abc.abstractmethod
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
        """Store one batch read from `since` (None: the node's first) up to `position`, in
        one transaction with the node's cursor; CursorMoved if the cursor is no longer
        `since` (another shipper of this node got there first: nothing is written)."""

    @abc.abstractmethod
    def note_error(self, node: str, error: str) -> None:
        """Record on the node's cursor why shipping stopped ("" clears it)."""

    @abc.abstractmethod
    def prune(self, before_day: int, pruned_at: int, dry_run: bool = False) -> Pruning:
        """Remove every record from the journal files of the days before `before_day` (days
        since the epoch: a month's first day), each node's cursor moved to start after
        them, in steps that each leave a store `audit verify --central` passes; with
        `dry_run`, only say what would go. Rollups are kept (counts, no personal data)."""

    @abc.abstractmethod
    def pruned(self, node: str) -> Pruned | None:
        """The node's prunes: the last one's `before` and last record, the records of all."""

    @abc.abstractmethod
    def nodes(self) -> list[Cursor]: ...

    @abc.abstractmethod
    def chain(self, node: str) -> Iterator[tuple[int, int, str, bytes]]:
        """(file_day, file_offset, id, line) of the node's records in chain order."""

    @abc.abstractmethod
    def breaks(self, node: str, limit: int = 100) -> list[Break]: ...

    @abc.abstractmethod
    def rollups(
        self,
        since_hour: int | None,
        until_hour: int | None,
        campaign: str | None = None,
        node: str | None = None,
    ) -> list[RollupRow]:
        """The counters of hours [since, until), summed over nothing (one row each)."""

    def rollup_sums(
        self,
        by: Sequence[str],
        since_hour: int | None,
        until_hour: int | None,
        campaign: str | None = None,
        node: str | None = None,
        kind: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """The counters of hours [since, until) summed by the database over what `by`
        leaves out: rows of `by`'s values, then each of ROLLUP_COUNTS. A month of counters
        is ~100,000 rows at 130,000 calls a day; a chart needs a few hundred."""
        if not by or not set(by) <= ROLLUP_GROUPS:
            raise ValueError(f"rollups are summed by some of {sorted(ROLLUP_GROUPS)}: {by}")
        where, args = rollup_filter(since_hour, until_hour, campaign, node, self.mark)
        if kind is not None:
            where += (" AND " if where else " WHERE ") + f"kind = {self.mark}"
            args.append(kind)
        columns = ", ".join(by)
        sums = ", ".join(f"CAST(sum({count}) AS bigint)" for count in ROLLUP_COUNTS)
        return self._select(
            f"SELECT {columns}, {sums} FROM rollups{where} GROUP BY {columns}", args
        )

    @abc.abstractmethod
    def search_number(
        self, number: str, since_ms: int | None, until_ms: int | None, limit: int = 1000
    ) -> list[Found]:
        """Records of an E.164 number, newest first."""

    # --- what the console reads (each a single indexed query) ----------------------------

    @abc.abstractmethod
    def search(
        self,
        filters: Filters,
        newest_first: bool = True,
        after: tuple[int, str] | None = None,
        limit: int = 50,
    ) -> list[Found]:
        """A page of the records `filters` selects, in time order from `after` (the
        (ts, id) of the last row of the page before)."""

    @abc.abstractmethod
    def record(self, record_id: str) -> Found | None:
        """The record of this id (its key's index)."""

    @abc.abstractmethod
    def last_shipped(self, node: str) -> int | None:
        """The `ts` of the node's last record in chain order (the chain's index), or None."""

    @abc.abstractmethod
    def events(self, since_ms: int, kinds: Sequence[str]) -> list[Found]:
        """The records of these kinds (none of them `decision`) since `since_ms`, oldest
        first: the index of the records that are not decisions."""

    @abc.abstractmethod
    def export(self, filters: Filters) -> Iterator[Found]:
        """Every record `filters` selects, node by node in chain order, streamed."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> CentralStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
