"""Parse import files (CSV with a header row, `,` or `;`) into validated rows.

Every line is checked before anything is loaded; a file with one bad line loads nothing,
and each bad line is reported with its number. Formats are documented in docs/imports.md.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

from dialguard.model import Contract, Sector
from dialguard.numbers import InvalidNumber, Number, normalise
from dialguard.store import ConsentRow, ContractRow, OptoutRow

__all__ = ["KINDS", "BadImportFile", "Parsed", "in_supported_years", "parse"]

_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Free text we store (reasons, proof and contract references) stays on one line and
# away from our field separator.
_REF = re.compile(r"^[^\x00-\x1f|]{0,200}$")

HEADERS: dict[str, tuple[tuple[str, ...], int]] = {
    # kind: (columns, how many are required)
    "dnc": (("number", "reason"), 1),
    "consent": (("number", "principal", "given_at", "expires_at", "proof_ref"), 5),
    "contract": (("number", "principal", "contract_id", "sector", "start", "end"), 6),
    "bloctel": (("telephone", "identifiant", "statut"), 3),
}
KINDS = tuple(HEADERS)

# How many bad lines a report lists before it just counts them.
MAX_REPORTED = 20
# No valid line comes near this (the longest, a consent, is ~150 characters); a longer
# one is a broken export, refused before the csv module is asked to hold it.
MAX_LINE_CHARS = 4096
# Instants outside these years are typos or sentinel values (9999-12-31), and would
# overflow date arithmetic in the rules.
_EARLIEST, _LATEST = 1970, 2199

T = TypeVar("T")


class BadImportFile(ValueError):
    """The file cannot be read as the kind asked for (one line)."""


@dataclass
class Parsed(Generic[T]):
    rows: list[T] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line N: what is wrong"
    error_count: int = 0
    lines: int = 0

    def reject(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(f"line {line}: {message}")


class _BadLine(ValueError):
    pass


def in_supported_years(moment: datetime) -> bool:
    return _EARLIEST <= moment.year <= _LATEST


def is_valid_principal(value: str) -> bool:
    return bool(_PRINCIPAL.match(value))


def is_valid_ref(value: str) -> bool:
    return bool(_REF.match(value))


def parse(kind: str, lines: Iterable[str], zone: ZoneInfo) -> Parsed[object]:
    """Parse an import file's lines; `zone` interprets dates given without a time."""
    if kind not in HEADERS:
        raise BadImportFile(f"unknown import kind {kind!r}: use one of {', '.join(KINDS)}")
    iterator = iter(lines)
    try:
        header_line = next(iterator)
    except StopIteration:
        raise BadImportFile("the file is empty: a header row is required") from None
    header_line = header_line.lstrip("\ufeff")
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    header = [h.strip().lower() for h in next(csv.reader([header_line], delimiter=delimiter))]
    columns, required = HEADERS[kind]
    if tuple(header) not in (columns, columns[:required]):
        raise BadImportFile(
            f"line 1: header {','.join(header)!r} is not {','.join(columns)!r}"
            + (f" (or {','.join(columns[:required])!r})" if required < len(columns) else "")
        )
    row_parser = _ROW_PARSERS[kind]
    parsed: Parsed[object] = Parsed()
    for number, fields in _records(iterator, delimiter):
        parsed.lines += 1
        if fields is None:
            parsed.reject(number, f"line longer than {MAX_LINE_CHARS} characters, or not CSV")
            continue
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        if len(fields) != len(header):
            parsed.reject(number, f"{len(fields)} fields, expected {len(header)}")
            continue
        values = dict(zip(header, (f.strip() for f in fields), strict=True))
        try:
            parsed.rows.append(row_parser(values, zone))
        except _BadLine as exc:
            parsed.reject(number, str(exc))
    return parsed


def _records(lines: Iterator[str], delimiter: str) -> Iterator[tuple[int, list[str] | None]]:
    # Line numbers count the header as line 1, as a spreadsheet shows them. One reader per
    # line: a stray quote then spoils one line, not the rest of the file.
    for offset, line in enumerate(lines, start=2):
        if len(line) > MAX_LINE_CHARS:
            yield offset, None
            continue
        try:
            yield offset, next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
        except csv.Error:
            yield offset, None


def _number(value: str) -> Number:
    try:
        number = normalise(value)
    except InvalidNumber as exc:
        raise _BadLine(str(exc)) from None
    if number.never_blocked:
        raise _BadLine(f"{value!r} is an emergency or short number, which is never blocked")
    return number


def _principal(value: str) -> str:
    if not _PRINCIPAL.match(value):
        raise _BadLine(f"principal {value!r} must be 1-64 letters, digits, '_', '.', '-'")
    return value


def _ref(name: str, value: str) -> str:
    if not _REF.match(value):
        raise _BadLine(f"{name} must be at most 200 characters, without '|' or control characters")
    return value


def _date(name: str, value: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise _BadLine(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None
    if not _EARLIEST <= day.year <= _LATEST:
        raise _BadLine(f"{name} {value!r} is outside the years {_EARLIEST}-{_LATEST}")
    return day


def _instant(name: str, value: str, zone: ZoneInfo) -> datetime:
    """A date (midnight in `zone`) or an ISO 8601 date-time (in `zone` if it has no offset)."""
    try:
        if len(value) == 10:
            moment = datetime.combine(date.fromisoformat(value), time(0), zone)
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise _BadLine(f"{name} {value!r} is not a date or an ISO 8601 date-time") from None
    if not _EARLIEST <= moment.year <= _LATEST:
        raise _BadLine(f"{name} {value!r} is outside the years {_EARLIEST}-{_LATEST}")
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _dnc_row(values: dict[str, str], zone: ZoneInfo) -> tuple[Number, str]:
    return _number(values["number"]), _ref("reason", values.get("reason", "") or "imported")


def _consent_row(values: dict[str, str], zone: ZoneInfo) -> ConsentRow:
    given = _instant("given_at", values["given_at"], zone)
    expires = _instant("expires_at", values["expires_at"], zone) if values["expires_at"] else None
    if expires is not None and expires <= given:
        raise _BadLine("expires_at must come after given_at")
    proof = _ref("proof_ref", values["proof_ref"])
    if not proof:
        raise _BadLine("proof_ref is required: the professional bears the burden of proof")
    return ConsentRow(
        _number(values["number"]), _principal(values["principal"]), given, expires, proof
    )


def _contract_row(values: dict[str, str], zone: ZoneInfo) -> ContractRow:
    contract_id = _ref("contract_id", values["contract_id"])
    if not contract_id:
        raise _BadLine("contract_id is required")
    try:
        sector = Sector(values["sector"])
    except ValueError:
        allowed = ", ".join(s.value for s in Sector)
        raise _BadLine(f"sector {values['sector']!r} is not one of {allowed}") from None
    start = _date("start", values["start"])
    end = _date("end", values["end"]) if values["end"] else None
    if end is not None and end < start:
        raise _BadLine("end must not come before start")
    return ContractRow(
        _number(values["number"]),
        _principal(values["principal"]),
        Contract(contract_id, sector, start, end),
    )


def _bloctel_row(values: dict[str, str], zone: ZoneInfo) -> OptoutRow:
    status = values["statut"].upper()
    if not status:
        raise _BadLine("Statut is empty")
    # "OK" is the registry's "not listed, you may call". Anything else is read as listed:
    # a status we do not know must not let a call through.
    return OptoutRow(
        _number(values["telephone"]), status != "OK", _ref("Identifiant", values["identifiant"])
    )


_ROW_PARSERS: dict[str, Callable[[dict[str, str], ZoneInfo], object]] = {
    "dnc": _dnc_row,
    "consent": _consent_row,
    "contract": _contract_row,
    "bloctel": _bloctel_row,
}
