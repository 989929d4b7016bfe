"""The caller IDs a campaign may present (L221-17): numbers and ranges, each with its
authorisation reference and validity dates. Pure: parsed from the configuration, asked at
dial time by the `caller_id` rule, with no Redis read.

An entry is one number or a range `FROM..TO` written in any spelling `numbers.normalise`
takes (`"01 62 00 00 00..01 62 00 09 99"`, `"+33 9 48 12 34 56"`). Both ends of a range
must be numbers of one plan and length, so that comparing their E.164 digits as integers
is comparing the numbers.
"""

from __future__ import annotations

import csv
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from dialguard.numbers import InvalidNumber, normalise

__all__ = ["FILE_COLUMNS", "Authorisation", "BadCallerIds", "CallerIds", "parse_entry", "read_file"]

RANGE = ".."
# A range wider than this is a typo (a missing digit turns 10,000 numbers into 10 million).
MAX_RANGE = 1_000_000


class BadCallerIds(ValueError):
    """One entry cannot be read; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Authorisation:
    """Numbers the company may present: `low`..`high` (E.164 digits, inclusive)."""

    low: int
    high: int
    digits: int  # how many digits both ends have
    text: str  # as written in the configuration
    ref: str  # the authorisation's reference (assignment, operator contract...)
    valid_from: date | None = None
    valid_until: date | None = None  # the last day it holds, included

    def holds_on(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_until is None or day <= self.valid_until
        )


def parse_entry(
    text: str, ref: str = "", valid_from: date | None = None, valid_until: date | None = None
) -> Authorisation:
    """One entry; BadCallerIds when it is not a number or a range of numbers."""
    low_text, dots, high_text = text.partition(RANGE)
    try:
        low = normalise(low_text)
        high = normalise(high_text) if dots else low
    except InvalidNumber as exc:
        raise BadCallerIds(f"{text!r}: {exc}") from None
    if low.never_blocked or high.never_blocked:
        digits_low, digits_high = low.e164, high.e164  # short numbers: digits as dialled
    else:
        digits_low, digits_high = low.key, high.key
    if len(digits_low) != len(digits_high) or low.territory != high.territory:
        raise BadCallerIds(f"{text!r}: both ends of a range must be numbers of one plan")
    first, last = int(digits_low), int(digits_high)
    if first > last:
        raise BadCallerIds(f"{text!r}: the range ends before it starts")
    if last - first >= MAX_RANGE:
        raise BadCallerIds(f"{text!r}: more than {MAX_RANGE:,} numbers: a digit missing?")
    if valid_from and valid_until and valid_until < valid_from:
        raise BadCallerIds(f"{text!r}: valid until {valid_until}, before {valid_from}")
    return Authorisation(first, last, len(digits_low), text, ref, valid_from, valid_until)


@dataclass(frozen=True, slots=True)
class CallerIds:
    """A campaign's authorised caller IDs, looked up by a number's digits."""

    entries: tuple[Authorisation, ...]
    _lows: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    _sorted: tuple[Authorisation, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.entries, key=lambda a: (a.low, a.high)))
        object.__setattr__(self, "_sorted", ordered)
        object.__setattr__(self, "_lows", tuple(a.low for a in ordered))

    def __str__(self) -> str:
        plural = "entry" if len(self.entries) == 1 else "entries"
        return f"{len(self.entries)} {plural}"

    def matching(self, digits: str) -> list[Authorisation]:
        """Every entry holding `digits` (E.164 digits; a short number as dialled), whatever
        its dates. Entries are few (hundreds): a bisection, then a short scan back."""
        if not digits.isdigit():
            return []
        value, length = int(digits), len(digits)
        end = bisect_right(self._lows, value)
        return [a for a in self._sorted[:end] if a.digits == length and value <= a.high]

    def authorisation(
        self, digits: str, day: date
    ) -> tuple[Authorisation | None, Authorisation | None]:
        """(an entry holding `digits` on `day`, or None; else an entry holding it on
        other days, to say why: expired or not yet valid)."""
        found = self.matching(digits)
        for entry in found:
            if entry.holds_on(day):
                return entry, None
        return None, (found[0] if found else None)


# The columns of a caller-ID file (`dialguard import callerid`, a campaign's
# caller_ids_file): `principal` may be left out, the others are required.
FILE_COLUMNS = ("number", "ref", "valid_from", "valid_until")
OPTIONAL_COLUMNS = ("principal",)
MAX_FILE_BYTES = 10_000_000  # hundreds of numbers in practice; past this, not such a file


def read_file(path: Path, principal: str | None = None) -> CallerIds:
    """The caller IDs of a CSV file with a header (`,` or `;`): number (a number or a range
    FROM..TO, any spelling), ref (the authorisation's reference, required), valid_from and
    valid_until (YYYY-MM-DD, either empty), and optionally principal: the company the
    number is assigned to. Caller IDs belong to the company: with a principal column,
    only the rows of `principal` are taken (None: all). BadCallerIds, in one line naming
    the line, for the first thing wrong: the file is taken whole or not at all."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadCallerIds(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise BadCallerIds(f"{path}: more than {MAX_FILE_BYTES:,} bytes: not a caller-ID file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadCallerIds(f"{path}: not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise BadCallerIds(f"{path}: empty: expected a header {','.join(FILE_COLUMNS)}")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    rows = csv.reader(lines, delimiter=delimiter)
    header = [name.strip().lower() for name in next(rows)]
    missing = [name for name in FILE_COLUMNS if name not in header]
    unknown = [name for name in header if name not in (*FILE_COLUMNS, *OPTIONAL_COLUMNS)]
    if missing or unknown or len(set(header)) != len(header):
        raise BadCallerIds(
            f"{path}: line 1: header {','.join(header)!r}: expected "
            f"{','.join(FILE_COLUMNS)} and optionally principal"
        )
    at = {name: header.index(name) for name in header}
    entries = []
    for number, fields in enumerate(rows, start=2):
        if not any(f.strip() for f in fields):
            continue
        where = f"{path}: line {number}"
        if len(fields) != len(header):
            raise BadCallerIds(f"{where}: {len(fields)} fields, expected {len(header)}")
        cell = {name: fields[i].strip() for name, i in at.items()}
        if principal is not None and "principal" in cell and cell["principal"] != principal:
            continue
        if not cell["ref"]:
            raise BadCallerIds(f"{where}: no ref (the authorisation's reference)")
        if len(cell["ref"]) > 200 or not cell["ref"].isprintable():
            raise BadCallerIds(f"{where}: ref must be printable, at most 200 characters")
        try:
            entries.append(
                parse_entry(
                    cell["number"],
                    cell["ref"],
                    _day(cell["valid_from"], "valid_from"),
                    _day(cell["valid_until"], "valid_until"),
                )
            )
        except BadCallerIds as exc:
            raise BadCallerIds(f"{where}: {exc}") from None
    return CallerIds(tuple(entries))


def _day(text: str, name: str) -> date | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or len(text) != 10:  # 20261130 is a date to fromisoformat, not here
        raise BadCallerIds(f"{name} {text!r} is not a date (YYYY-MM-DD)")
    return day
