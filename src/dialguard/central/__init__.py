"""The central store: every node's journal records in one SQL store (docs/central.md).

`store` is the small interface the shipper, `audit verify --central` and the console use;
`sqlite` (the embedded default, a file in the data directory) and `postgres` (several
nodes, one database) implement it. `migrate` holds the schema's versions; `ship` copies
a node's journal in, checking its hash chain as it goes; `verify` re-checks what is
stored; `stats` answers `audit stats` from the rollup counters.

The journal stays the system of record: the store is a copy that can be rebuilt from the
journals (`dialguard audit ship --dir`), never the other way round.
"""

from dialguard.central.connect import open_store
from dialguard.central.errors import CentralUnavailable, CursorMoved
from dialguard.central.store import Break, CentralStore, Cursor, Row

__all__ = [
    "Break",
    "CentralStore",
    "CentralUnavailable",
    "Cursor",
    "CursorMoved",
    "Row",
    "open_store",
]
