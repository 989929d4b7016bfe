"""The central store's schema, version by version (`dialguard central migrate`).

Each migration is applied once, in its own transaction with its row in `schema_version`
(both backends run DDL in transactions), under a lock that makes a second `migrate` at the
same time wait and then find nothing to do: `serve` and the console run it at every start.
A store at a version newer than this code knows is refused rather than written.

Never edit a migration that has shipped: add the next one.

Version 1, the tables (docs/central.md):

- `records`: one row per journal record: `id`, `ts` (ms, UTC), `node`, where it was in the
  node's journal (`file_day`: the file's UTC day as days since the epoch, `file_offset`:
  the line's byte offset; together the chain's order), the fields searches filter on
  (`kind`, `result`, `reason`, `outcome`, `number`, `campaign`, `principal`, `shadowed`),
  `hash` and `prev`, the line itself as bytes (the chain is re-verified from them), and
  `shipped_at` (ms). Indexes: (number, ts), (campaign, ts), (reason, ts), (ts), and
  (node, file_day, file_offset) for `audit verify --central`. In PostgreSQL the table is
  partitioned by month of `ts` (partitions made by the shipper as records need them), and
  its key is (id, ts): a key of a partitioned table must hold the partition column, and a
  record's `ts` is part of its hashed bytes, so a re-sent record has both the same.
- `rollups`: counters per UTC hour, node, kind, campaign, result and reason (an outcome's
  `outcome` for outcome records), with how many of them were shadow-mode denials.
- `cursors`: per node, the next byte to ship, the chain's last hash, where it started.
- `chain_breaks`: what ingest found wrong, per node and record.

Version 2, for the console:

- `records.degraded` and `rollups.degraded`: decisions the campaign's fail mode took
  (Redis unreachable, the deadline passed; the record's `degraded` is set), counted as
  `shadowed` is, so *Today* shows them from the counters. Records stored before are
  marked from their lines (the byte string `"degraded":"` followed by anything but `"`:
  inside a JSON string a quote is escaped, so the key can only be the record's own) and
  their counters recomputed, once.
- `records_events`: an index on `ts` of the records that are not decisions (changes,
  imports, reloads, exports: a few among millions), for the changes of the last days that
  *Today* checks against Redis, without reading the decisions around them.

Version 3, retention and the console's searches at scale:

- `prunes`: each prune of a node's records: every record from the journal files before
  `before_day` removed, how many, and the last one removed (file day, byte offset, hash:
  where the node's chain now starts, also written to its cursor's `start_hash`).
- indexes for searches the others served badly at 1-10 M records (docs/benchmarks.md,
  "Central store at scale"): (principal, ts) (a principal with few calls or none read
  every record of the range), (node, ts) (SQLite read all of a node's records and sorted
  them), (campaign, reason, ts) (a campaign and a reason that seldom meet).
"""

from __future__ import annotations

from dataclasses import dataclass

from dialguard.central.errors import CentralUnavailable

__all__ = ["LATEST", "MIGRATIONS", "Migration", "check_known", "pending"]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_RECORD_COLUMNS = """
    id text NOT NULL,
    ts bigint NOT NULL,
    node text NOT NULL,
    file_day integer NOT NULL,
    file_offset bigint NOT NULL,
    kind text NOT NULL,
    result text,
    reason text,
    outcome text,
    number text,
    campaign text,
    principal text,
    shadowed {boolean} NOT NULL,
    hash text NOT NULL,
    prev text NOT NULL,
    line {bytes} NOT NULL,
    shipped_at bigint NOT NULL"""

_COMMON = (
    """CREATE TABLE rollups (
    hour integer NOT NULL,
    node text NOT NULL,
    kind text NOT NULL,
    campaign text NOT NULL,
    result text NOT NULL,
    reason text NOT NULL,
    n bigint NOT NULL,
    shadowed bigint NOT NULL,
    PRIMARY KEY (hour, node, kind, campaign, result, reason)
)""",
    """CREATE TABLE cursors (
    node text PRIMARY KEY,
    file text NOT NULL,
    file_offset bigint NOT NULL,
    last_hash text NOT NULL,
    start_hash text NOT NULL,
    records bigint NOT NULL,
    shipped_at bigint NOT NULL,
    error text NOT NULL DEFAULT ''
)""",
    "CREATE INDEX records_number ON records (number, ts)",
    "CREATE INDEX records_campaign ON records (campaign, ts)",
    "CREATE INDEX records_reason ON records (reason, ts)",
    "CREATE INDEX records_ts ON records (ts)",
    "CREATE INDEX records_chain ON records (node, file_day, file_offset)",
)

_PRUNES = """CREATE TABLE prunes (
    id {key},
    node text NOT NULL,
    before_day integer NOT NULL,
    records bigint NOT NULL,
    last_day integer NOT NULL,
    last_offset bigint NOT NULL,
    last_hash text NOT NULL,
    pruned_at bigint NOT NULL
)"""
_PRUNES_NODE = "CREATE INDEX prunes_node ON prunes (node, id)"
_SEARCH_INDEXES = (
    "CREATE INDEX records_principal ON records (principal, ts)",
    "CREATE INDEX records_node ON records (node, ts)",
    "CREATE INDEX records_campaign_reason ON records (campaign, reason, ts)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "records, rollups, cursors, chain_breaks",
        sqlite=(
            "CREATE TABLE records ("
            + _RECORD_COLUMNS.format(boolean="integer", bytes="blob")
            + ",\n    UNIQUE (id)\n)",
            *_COMMON,
            """CREATE TABLE chain_breaks (
    id integer PRIMARY KEY,
    node text NOT NULL,
    record_id text NOT NULL,
    file text NOT NULL,
    file_offset bigint NOT NULL,
    problem text NOT NULL,
    detected_at bigint NOT NULL
)""",
            "CREATE INDEX chain_breaks_node ON chain_breaks (node, id)",
        ),
        postgres=(
            "CREATE TABLE records ("
            + _RECORD_COLUMNS.format(boolean="boolean", bytes="bytea")
            + ",\n    PRIMARY KEY (id, ts)\n) PARTITION BY RANGE (ts)",
            *_COMMON,
            """CREATE TABLE chain_breaks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node text NOT NULL,
    record_id text NOT NULL,
    file text NOT NULL,
    file_offset bigint NOT NULL,
    problem text NOT NULL,
    detected_at bigint NOT NULL
)""",
            "CREATE INDEX chain_breaks_node ON chain_breaks (node, id)",
        ),
    ),
)

# The byte strings a degraded decision's line holds, and an undegraded one's (`""`), as
# hexadecimal for each backend's literal (a blob, a bytea): lines are compared undecoded.
_DEGRADED_HEX = b'"degraded":"'.hex()
_UNDEGRADED_HEX = b'"degraded":""'.hex()


def _recount(hour: str) -> str:
    """The degraded counters of the rollups, from the records marked (`hour`: the
    backend's expression of a record's UTC hour)."""
    return f"""UPDATE rollups SET degraded = d.n FROM (
    SELECT {hour} AS hour, node, kind, coalesce(campaign, '') AS campaign,
           coalesce(result, '') AS result, coalesce(reason, outcome, '') AS reason,
           count(*) AS n
    FROM records WHERE degraded GROUP BY 1, 2, 3, 4, 5, 6
) AS d
WHERE rollups.hour = d.hour AND rollups.node = d.node AND rollups.kind = d.kind
  AND rollups.campaign = d.campaign AND rollups.result = d.result
  AND rollups.reason = d.reason"""


_EVENTS_INDEX = "CREATE INDEX records_events ON records (ts) WHERE kind <> 'decision'"

MIGRATIONS += (
    Migration(
        2,
        "degraded decisions counted; records_events",
        sqlite=(
            "ALTER TABLE records ADD COLUMN degraded integer NOT NULL DEFAULT 0",
            "ALTER TABLE rollups ADD COLUMN degraded bigint NOT NULL DEFAULT 0",
            f"""UPDATE records SET degraded = 1 WHERE kind = 'decision'
    AND instr(line, X'{_DEGRADED_HEX}') > 0 AND instr(line, X'{_UNDEGRADED_HEX}') = 0""",
            _recount("ts / 3600000"),
            _EVENTS_INDEX,
        ),
        postgres=(
            "ALTER TABLE records ADD COLUMN degraded boolean NOT NULL DEFAULT false",
            "ALTER TABLE rollups ADD COLUMN degraded bigint NOT NULL DEFAULT 0",
            f"""UPDATE records SET degraded = true WHERE kind = 'decision'
    AND position('\\x{_DEGRADED_HEX}'::bytea IN line) > 0
    AND position('\\x{_UNDEGRADED_HEX}'::bytea IN line) = 0""",
            _recount("(ts / 3600000)::integer"),
            _EVENTS_INDEX,
        ),
    ),
    Migration(
        3,
        "prunes; search indexes",
        sqlite=(_PRUNES.format(key="integer PRIMARY KEY"), _PRUNES_NODE, *_SEARCH_INDEXES),
        postgres=(
            _PRUNES.format(key="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
            _PRUNES_NODE,
            *_SEARCH_INDEXES,
        ),
    ),
)

LATEST = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


def check_known(version: int, shown: str) -> None:
    """Refuse a store written by a newer dialguard: its schema may mean other things."""
    if version > LATEST:
        raise CentralUnavailable(
            f"{shown}: the central store's schema is at version {version}, newer than this"
            f" dialguard knows ({LATEST}): upgrade dialguard on this node"
        )


def pending(version: int) -> list[Migration]:
    return [migration for migration in MIGRATIONS if migration.version > version]
