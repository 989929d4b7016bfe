"""The journal's on-disk form, shared by the writer and the readers (docs/audit.md).

A directory holds:

- `audit-YYYY-MM-DD.jsonl`: the records, one JSON object a line, in chain order. A record
  goes to the file of its UTC day, or to the newest file when that is later (a record
  written a few ms after midnight, or by a process whose clock lags): the chain runs in
  file-name order, so a closed day is never reopened.
- `audit-YYYY-MM-DD.idx`: 16 bytes per record, in line order: the number (E.164 digits as
  an unsigned 64-bit integer, 0 when there is none) and the record's byte offset. It is
  not fsync'd: it can always be rebuilt from the journal, and the writer tops it up when
  it finds it short after a crash.
- `audit.head`: the chain's head after the last batch: file, size, last hash. Written
  after the batch is durable, so it never points past the journal; a journal file
  shorter than the head says was truncated.
- `audit.lock`: flock'd around each batch by every writing process.
- `audit.start`: written by `audit prune`: the last hash of the newest removed file, where
  the remaining chain starts.
- `audit-YYYY-MM-DD.late`: the UTC days (`YYYY-MM-DD`, one a line) of the records that
  file holds from more than a day before its own: a change dated in the past (`consent
  withdraw --at`, an outcome reported late) goes to the newest file, and a search of its
  day must still find it. Written and fsync'd before those records; rare, tiny.
- `audit-YYYY-MM-DD.jsonl.torn`: bytes of a record cut short by a crash, moved aside by
  the next writer (that record's decision was never answered: it was not fsync'd).

Each line ends `,"prev":"<64 hex>","hash":"<64 hex>"}` where `hash` is the SHA-256 of the
line's bytes up to and including the `prev` field: the record's exact bytes and the
previous record's hash. Verifying needs no JSON re-encoding, only these fixed-width slices.
"""

from __future__ import annotations

import hashlib
import re
import struct
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path

__all__ = [
    "GENESIS",
    "HEAD_NAME",
    "INDEX_ENTRY",
    "LOCK_NAME",
    "START_NAME",
    "AuditUnavailable",
    "Head",
    "day_name",
    "index_key",
    "index_path",
    "journal_files",
    "late_days",
    "late_path",
    "parse_head",
    "seal",
    "unseal",
]

GENESIS = b"0" * 64  # the `prev` of the very first record of a journal
HEAD_NAME = "audit.head"
LOCK_NAME = "audit.lock"
START_NAME = "audit.start"
INDEX_ENTRY = struct.Struct(">QQ")  # number, offset: big-endian so keys compare as bytes

_PREV = b',"prev":"'
_HASH = b',"hash":"'
_PREV_LEN = len(_PREV) + 64 + 1  # ,"prev":"<hex>"
_HASH_LEN = len(_HASH) + 64 + 2  # ,"hash":"<hex>"}
_FILE = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.jsonl$")
_HEAD = re.compile(rb"^(audit-\d{4}-\d{2}-\d{2}\.jsonl) (\d{1,16}) ([0-9a-f]{64})\n")


class AuditUnavailable(Exception):
    """The journal cannot be written or read; one line."""


def seal(body: bytes, prev: bytes) -> tuple[bytes, bytes]:
    """The journal line for a compact JSON object `body` after `prev`, and its hash."""
    sealed = body[:-1] + _PREV + prev + b'"'
    digest = hashlib.sha256(sealed).hexdigest().encode()
    return sealed + _HASH + digest + b'"}\n', digest


def unseal(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(hashed bytes, prev, hash) of a line without its newline; None if not sealed."""
    if len(line) < _PREV_LEN + _HASH_LEN + 2 or not line.endswith(b'"}'):
        return None
    hashed = line[:-_HASH_LEN]
    if line[-_HASH_LEN : -_HASH_LEN + len(_HASH)] != _HASH:
        return None
    if hashed[-_PREV_LEN : -_PREV_LEN + len(_PREV)] != _PREV or not hashed.endswith(b'"'):
        return None
    return hashed, hashed[-65:-1], line[-66:-2]


def index_key(number: object) -> int:
    """An E.164 number as an integer (at most 15 digits: fits 64 bits exactly); else 0."""
    if isinstance(number, str) and number.startswith("+") and number[1:].isdigit():
        return int(number[1:])
    return 0


@lru_cache(maxsize=8)
def day_name(day_number: int) -> str:
    """`audit-YYYY-MM-DD.jsonl` for a day counted from the epoch (UTC)."""
    return datetime.fromtimestamp(day_number * 86_400, UTC).strftime("audit-%Y-%m-%d.jsonl")


def day_of(name: str) -> date:
    match = _FILE.match(name)
    assert match is not None
    return date.fromisoformat(match[1])


def index_path(journal: Path) -> Path:
    return journal.with_suffix(".idx")


def late_path(journal: Path) -> Path:
    return journal.with_suffix(".late")


def late_days(journal: Path) -> set[date]:
    """The days of the records `journal` holds from more than a day before its own."""
    try:
        raw = late_path(journal).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return set()
    days = set()
    for line in raw.split():
        try:
            days.add(date.fromisoformat(line))
        except ValueError:  # a line cut by a crash: its records were never written
            continue
    return days


def journal_files(directory: Path) -> list[Path]:
    """The journal files in chain order; AuditUnavailable if the directory cannot be read."""
    try:
        names = [entry.name for entry in directory.iterdir() if _FILE.match(entry.name)]
    except FileNotFoundError:
        raise AuditUnavailable(f"{directory}: no such audit directory") from None
    except NotADirectoryError:
        raise AuditUnavailable(f"{directory}: not a directory") from None
    except OSError as exc:
        raise AuditUnavailable(f"{directory}: cannot read: {exc.strerror}") from None
    return [directory / name for name in sorted(names)]


class Head:
    __slots__ = ("hash", "name", "size")

    def __init__(self, name: str, size: int, hash_: bytes) -> None:
        self.name = name
        self.size = size
        self.hash = hash_

    def encode(self) -> bytes:
        # Fixed width: each pwrite over the old head replaces it whole.
        return b"%s %016d %s\n" % (self.name.encode(), self.size, self.hash)


def parse_head(raw: bytes) -> Head | None:
    match = _HEAD.match(raw)
    if match is None:
        return None
    return Head(match[1].decode(), int(match[2]), match[3])
