"""What the VICIdial sync remembers between passes, in one SQLite file of its own:

- the **cursor**: how far in the audit journal the live do-not-call additions have been
  written to VICIdial (a journal file's name and a byte offset; the journal only ever
  grows at its end, one day file after the other);
- for each VICIdial list (the system list and each mapped campaign's), the numbers it held
  at the last pass (`seen`, store keys: E.164 digits) and its **fingerprint** then. A pass
  compares what VICIdial holds now with `seen`: what is new was added there, what is gone
  was deleted there;
- which VICIdial database all this is about: the file is refused for another one, whose
  lists would read as every number deleted.

Each step commits its part of this together with what it did (a page of changes, a batch
of additions written), so a sync stopped anywhere starts again from what was done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from dialguard.vicidial.tables import Fingerprint

__all__ = ["Cursor", "State", "StateProblem"]

Cursor = tuple[str, int]  # (journal file name, byte offset)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fingerprint (list TEXT PRIMARY KEY, value TEXT NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (list TEXT NOT NULL, number TEXT NOT NULL,
  PRIMARY KEY (list, number)) WITHOUT ROWID;
"""
# Seconds another process may hold the database before a statement gives up.
BUSY_TIMEOUT_S = 30


class StateProblem(Exception):
    """The state file cannot be used: one line saying what to do."""


class State:
    def __init__(self, path: Path, database: str) -> None:
        """Open (or create) the state of the sync with `database` (host:port/name)."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                # Numbers of consumers: readable by the service's user alone.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self.db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")  # a cursor must not move back
            # The scratch table of a pass (a list read whole) never needs to reach a disk.
            self.db.execute("PRAGMA temp_store = MEMORY")
            self.db.executescript(_SCHEMA)
            known = self._meta("database")
        except (OSError, sqlite3.Error) as exc:
            raise StateProblem(f"{path}: cannot use the VICIdial sync's state: {exc}") from None
        if known is None:
            with self.transaction():
                self._set_meta("database", database)
        elif known != database:
            self.db.close()
            raise StateProblem(
                f"{path} keeps the sync with {known}, not {database}: remove it to start"
                f" over with {database} (the first pass then reads every list whole)"
            )
        self._lock_fd = -1

    def close(self) -> None:
        self.db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- one pass at a time ---------------------------------------------------------------

    def try_lock(self) -> bool:
        """Take the pass lock without waiting: False when another process holds it."""
        return self._take_lock(fcntl.LOCK_EX | fcntl.LOCK_NB)

    def lock(self) -> None:
        """Take the pass lock, waiting for the other process's pass to end."""
        self._take_lock(fcntl.LOCK_EX)

    def _take_lock(self, flags: int) -> bool:
        if self._lock_fd < 0:
            lock_path = self.path.with_name(self.path.name + ".lock")
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, flags)
        except BlockingIOError:
            return False
        return True

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- the journal cursor ---------------------------------------------------------------

    def cursor(self) -> Cursor | None:
        name, offset = self._meta("cursor_file"), self._meta("cursor_offset")
        if name is None or offset is None:
            return None
        return name, int(offset)

    def set_cursor(self, cursor: Cursor) -> None:
        """Within a transaction."""
        self._set_meta("cursor_file", cursor[0])
        self._set_meta("cursor_offset", str(cursor[1]))

    # --- what VICIdial's lists held -------------------------------------------------------

    def fingerprint(self, list_name: str) -> Fingerprint | None:
        row = self.db.execute(
            "SELECT value FROM fingerprint WHERE list = ?", (list_name,)
        ).fetchone()
        return Fingerprint.decode(row[0]) if row else None

    def set_fingerprint(self, list_name: str, value: Fingerprint | None) -> None:
        """Within a transaction. None: unknown (the next pass reads the list whole)."""
        if value is None:
            self.db.execute("DELETE FROM fingerprint WHERE list = ?", (list_name,))
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO fingerprint (list, value) VALUES (?, ?)",
                (list_name, value.encode()),
            )

    def mark_seen(self, list_name: str, numbers: Iterable[str]) -> None:
        """Within a transaction."""
        self.db.executemany(
            "INSERT OR IGNORE INTO seen (list, number) VALUES (?, ?)",
            ((list_name, number) for number in numbers),
        )

    def unmark_seen(self, list_name: str, numbers: Iterable[str]) -> None:
        """Within a transaction."""
        self.db.executemany(
            "DELETE FROM seen WHERE list = ? AND number = ?",
            ((list_name, number) for number in numbers),
        )

    def seen_in(self, list_name: str, number: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM seen WHERE list = ? AND number = ?", (list_name, number)
        ).fetchone()
        return row is not None

    def counts(self) -> dict[str, int]:
        """Numbers seen in each list at its last pass."""
        rows = self.db.execute("SELECT list, COUNT(*) FROM seen GROUP BY list").fetchall()
        return {str(name): int(count) for name, count in rows}

    def forget_list(self, list_name: str) -> None:
        """A list no longer mapped: what it held is forgotten (nothing is removed from
        dialguard for it: an unmapping lifts no do-not-call). Within a transaction."""
        self.db.execute("DELETE FROM seen WHERE list = ?", (list_name,))
        self.db.execute("DELETE FROM fingerprint WHERE list = ?", (list_name,))

    def lists(self) -> set[str]:
        rows = self.db.execute("SELECT list FROM fingerprint UNION SELECT list FROM seen")
        return {str(row[0]) for row in rows}

    # --- this pass's reading of a list ----------------------------------------------------

    def start_reading(self) -> None:
        """A scratch table for the numbers VICIdial's changed lists hold now."""
        self.db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS current (list TEXT NOT NULL, number TEXT NOT NULL,"
            " PRIMARY KEY (list, number)) WITHOUT ROWID"
        )
        self.db.execute("DELETE FROM current")

    def read(self, list_name: str, numbers: Iterable[str]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO current (list, number) VALUES (?, ?)",
            ((list_name, number) for number in numbers),
        )

    def now_in(self, list_name: str, number: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM current WHERE list = ? AND number = ?", (list_name, number)
        ).fetchone()
        return row is not None

    def added(self, list_name: str, after: str, limit: int) -> list[str]:
        """Numbers the list holds now and did not at the last pass, after `after`."""
        rows = self.db.execute(
            "SELECT number FROM current c WHERE list = ? AND number > ? AND NOT EXISTS"
            " (SELECT 1 FROM seen s WHERE s.list = c.list AND s.number = c.number)"
            " ORDER BY number LIMIT ?",
            (list_name, after, limit),
        )
        return [str(row[0]) for row in rows]

    def gone(self, list_name: str, after: str, limit: int) -> list[str]:
        """Numbers the list held at the last pass and does not now, after `after`."""
        rows = self.db.execute(
            "SELECT number FROM seen s WHERE list = ? AND number > ? AND NOT EXISTS"
            " (SELECT 1 FROM current c WHERE c.list = s.list AND c.number = s.number)"
            " ORDER BY number LIMIT ?",
            (list_name, after, limit),
        )
        return [str(row[0]) for row in rows]

    def gone_count(self, list_name: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM seen s WHERE list = ? AND NOT EXISTS"
            " (SELECT 1 FROM current c WHERE c.list = s.list AND c.number = s.number)",
            (list_name,),
        ).fetchone()
        return int(row[0])

    # --- meta -----------------------------------------------------------------------------

    def note(self, key: str, value: str) -> None:
        """Within a transaction: what `vicidial status` shows (the last pass, say)."""
        self._set_meta(key, value)

    def noted(self, key: str) -> str | None:
        return self._meta(key)

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
