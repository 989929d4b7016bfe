"""VICIdial's do-not-call tables in its MariaDB (or MySQL) database: read and written here
alone, with parameterised queries only.

The tables (VICIdial's schema, MyISAM): `vicidial_dnc (phone_number PRIMARY KEY)`, the
system-wide ("internal") list; `vicidial_campaign_dnc (phone_number, campaign_id)`, unique
on the pair, one list per campaign; and, in newer schemas, `vicidial_dnc_log
(phone_number, campaign_id, action 'add'|'delete', action_date, user)`, which says who
added or deleted an entry and when (campaign_id `-SYSINT-` for the system list).

MyISAM has no transactions and no snapshots, and a long read holds a table lock that
VICIdial's own writes queue behind. So lists are read in short pages along the primary
key (each a quick index range), and a pass first reads a fingerprint of each list (its
count and checksums, computed by the server): a list whose fingerprint did not change is
not read at all. The fingerprint is taken before the pages, so a change made while they
are read changes the next fingerprint and is read on the next pass.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import pymysql
import pymysql.cursors

from dialguard.config import VicidialSettings

__all__ = [
    "PAGE",
    "SYSTEM_LIST",
    "Fingerprint",
    "LogRow",
    "Tables",
    "VicidialUnavailable",
    "fingerprint_with",
]

# VICIdial's own name for the system-wide list in vicidial_dnc_log (its admin pages).
SYSTEM_LIST = "-SYSINT-"
# Rows a page reads: one quick index range each, so VICIdial's writes never wait long.
PAGE = 5000
# Numbers a log lookup or a presence check asks about at once (two forms each).
LOOKUP = 500
# Seconds: to connect, and for one statement's answer (a fingerprint scans a list).
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_S = 60

T = TypeVar("T")

# The user dialguard's own entries are logged under (vicidial_dnc_log.user, VARCHAR(20)).
DIALGUARD_USER = "dialguard"


class VicidialUnavailable(Exception):
    """VICIdial's database cannot be reached or used now: one line, without a password."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A list's rows in three numbers: changed by any insertion or deletion (short of a
    CRC-32 collision that also keeps the count, the sum and the XOR)."""

    count: int
    crc_sum: int
    crc_xor: int

    def encode(self) -> str:
        return f"{self.count}:{self.crc_sum}:{self.crc_xor}"

    @classmethod
    def decode(cls, text: str) -> Fingerprint:
        count, crc_sum, crc_xor = (int(part) for part in text.split(":"))
        return cls(count, crc_sum, crc_xor)


EMPTY = Fingerprint(0, 0, 0)


def fingerprint_with(fingerprint: Fingerprint, raw: str) -> Fingerprint:
    """The fingerprint once the row `raw` is inserted: the server's CRC32() is the same
    CRC-32 as zlib's, over the same (ASCII) bytes."""
    crc = zlib.crc32(raw.encode("ascii", "replace"))
    return Fingerprint(fingerprint.count + 1, fingerprint.crc_sum + crc, fingerprint.crc_xor ^ crc)


@dataclass(frozen=True, slots=True)
class LogRow:
    phone_number: str
    list: str  # SYSTEM_LIST or a campaign_id
    action: str  # add or delete
    at: datetime | None  # VICIdial's server time (DATETIME, no zone)
    user: str


class Tables:
    """One connection to VICIdial's database, opened on first use and again after a
    failure. Not thread-safe: one caller at a time (the sync runs its calls one by one)."""

    def __init__(self, settings: VicidialSettings) -> None:
        self.settings = settings
        self._connection: pymysql.connections.Connection[Any] | None = None

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(pymysql.MySQLError):  # gone already: nothing to close
                self._connection.close()
            self._connection = None

    def _run(self, sql: str, args: Sequence[object] | None = None) -> tuple[Any, ...]:
        def body(cursor: Any) -> tuple[Any, ...]:
            cursor.execute(sql, args)
            return tuple(cursor.fetchall())

        return self._call(body)

    def _call(self, body: Callable[[Any], T]) -> T:
        """Run `body(cursor)`; any failure closes the connection (the next call opens a
        new one) and becomes VicidialUnavailable with the server's message."""
        try:
            if self._connection is None:
                settings = self.settings
                self._connection = pymysql.connect(
                    host=settings.host,
                    port=settings.port,
                    user=settings.user,
                    password=settings.password or "",
                    database=settings.database,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    read_timeout=STATEMENT_TIMEOUT_S,
                    write_timeout=STATEMENT_TIMEOUT_S,
                    autocommit=True,  # MyISAM: each statement stands alone anyway
                    charset="utf8mb4",
                )
            with self._connection.cursor() as cursor:
                return body(cursor)
        except pymysql.MySQLError as exc:
            self.close()
            where = self.settings.shown
            raise VicidialUnavailable(f"VICIdial's database {where}: {_said(exc)}") from None
        except OSError as exc:  # a socket error PyMySQL did not wrap
            self.close()
            raise VicidialUnavailable(
                f"VICIdial's database {self.settings.shown}: {exc.strerror or exc}"
            ) from None

    # --- reading ------------------------------------------------------------------------

    def has_log(self) -> bool:
        """Whether this schema has vicidial_dnc_log (older ones do not)."""
        rows = self._run(
            "SELECT COUNT(*) FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = 'vicidial_dnc_log'"
        )
        return bool(rows and rows[0][0])

    def fingerprints(self, campaign_ids: Iterable[str]) -> dict[str, Fingerprint]:
        """Each list's fingerprint: SYSTEM_LIST's and each campaign's (an empty list's
        too). campaign_id compares without case in VICIdial's collation: the answer uses
        the ids as given."""
        found = {SYSTEM_LIST: self._fingerprint(self._run(_FINGERPRINT_SYSTEM)[0])}
        wanted = {campaign.casefold(): campaign for campaign in campaign_ids}
        for campaign in wanted.values():
            found[campaign] = EMPTY
        if wanted:
            marks = ", ".join(["%s"] * len(wanted))
            rows = self._run(_FINGERPRINT_CAMPAIGNS.format(marks=marks), list(wanted.values()))
            sums: dict[str, Fingerprint] = {}
            for campaign_id, *values in rows:
                name = wanted.get(str(campaign_id).casefold())
                if name is not None:
                    # Two spellings of one id (SALES1, sales1) are one list to VICIdial.
                    before = sums.get(name, EMPTY)
                    part = self._fingerprint(values)
                    sums[name] = Fingerprint(
                        before.count + part.count,
                        before.crc_sum + part.crc_sum,
                        before.crc_xor ^ part.crc_xor,
                    )
            found.update(sums)
        return found

    @staticmethod
    def _fingerprint(row: Sequence[Any]) -> Fingerprint:
        count, crc_sum, crc_xor = row
        return Fingerprint(int(count or 0), int(crc_sum or 0), int(crc_xor or 0))

    def entries(self, list_name: str) -> Iterator[list[str]]:
        """The phone_number of every row of one list, a page at a time, in key order."""
        after = ""
        while True:
            if list_name == SYSTEM_LIST:
                rows = self._run(_PAGE_SYSTEM, (after, PAGE))
            else:
                rows = self._run(_PAGE_CAMPAIGN, (list_name, after, PAGE))
            page = [str(row[0]) for row in rows]
            if page:
                yield page
            if len(page) < PAGE:
                return
            after = page[-1]

    def log(self, phone_numbers: Sequence[str]) -> list[LogRow]:
        """vicidial_dnc_log's rows about these spellings, oldest first."""
        rows: list[LogRow] = []
        for start in range(0, len(phone_numbers), 2 * LOOKUP):
            chunk = list(phone_numbers[start : start + 2 * LOOKUP])
            marks = ", ".join(["%s"] * len(chunk))
            for number, campaign_id, action, at, user in self._run(_LOG.format(marks=marks), chunk):
                moment = at if isinstance(at, datetime) else None
                rows.append(
                    LogRow(str(number), str(campaign_id), str(action), moment, str(user or ""))
                )
        return rows

    def present(self, phone_numbers: Sequence[str]) -> set[str]:
        """Which of these spellings vicidial_dnc holds."""
        found: set[str] = set()
        for start in range(0, len(phone_numbers), 2 * LOOKUP):
            chunk = list(phone_numbers[start : start + 2 * LOOKUP])
            marks = ", ".join(["%s"] * len(chunk))
            found.update(str(row[0]) for row in self._run(_PRESENT.format(marks=marks), chunk))
        return found

    # --- writing ------------------------------------------------------------------------

    def add(self, phone_number: str, logged: bool) -> bool:
        """Put one number on vicidial_dnc, and when `logged` (the schema has the log) note
        it there as added by `dialguard`: whether it was inserted (False: it was there).
        The log row follows the insertion only, so a pass run again logs nothing twice."""

        def body(cursor: Any) -> bool:
            inserted: bool = cursor.execute(_INSERT, (phone_number,)) == 1
            if inserted and logged:
                cursor.execute(_INSERT_LOG, (phone_number, SYSTEM_LIST, DIALGUARD_USER))
            return inserted

        return self._call(body)


def _said(exc: pymysql.MySQLError) -> str:
    """The server's message in one line (PyMySQL's errors are (code, message))."""
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        code, message = args[0], str(args[1])
        if code == 1146:  # ER_NO_SUCH_TABLE
            return f"{message}: is this VICIdial's database?"
        return f"{' '.join(message.split())} ({code})"
    return " ".join(str(exc).split()) or type(exc).__name__


_FINGERPRINT_SYSTEM = (
    "SELECT COUNT(*), SUM(CRC32(phone_number)), BIT_XOR(CRC32(phone_number)) FROM vicidial_dnc"
)
_FINGERPRINT_CAMPAIGNS = (
    "SELECT campaign_id, COUNT(*), SUM(CRC32(phone_number)), BIT_XOR(CRC32(phone_number))"
    " FROM vicidial_campaign_dnc WHERE campaign_id IN ({marks}) GROUP BY campaign_id"
)
_PAGE_SYSTEM = (
    "SELECT phone_number FROM vicidial_dnc WHERE phone_number > %s ORDER BY phone_number LIMIT %s"
)
_PAGE_CAMPAIGN = (
    "SELECT phone_number FROM vicidial_campaign_dnc WHERE campaign_id = %s AND phone_number > %s"
    " ORDER BY phone_number LIMIT %s"
)
_LOG = (
    "SELECT phone_number, campaign_id, action, action_date, user FROM vicidial_dnc_log"
    " WHERE phone_number IN ({marks}) ORDER BY action_date"
)
_PRESENT = "SELECT phone_number FROM vicidial_dnc WHERE phone_number IN ({marks})"
_INSERT = "INSERT IGNORE INTO vicidial_dnc (phone_number) VALUES (%s)"
_INSERT_LOG = (
    "INSERT INTO vicidial_dnc_log (phone_number, campaign_id, action, action_date, user)"
    " VALUES (%s, %s, 'add', NOW(), %s)"
)
