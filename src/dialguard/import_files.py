"""Parse import files (CSV with a header row, `,` or `;`) into validated rows, streaming.

Each line is checked on its own and a bad one is reported with its number; what a bad line
does to the import (nothing loaded, or the line skipped) is the loader's business. Formats
are documented in docs/imports.md.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from itertools import islice
from typing import Any, Generic, NamedTuple, Protocol, TypeVar
from zoneinfo import ZoneInfo

from dialguard.model import Contract, Sector
from dialguard.numbers import InvalidNumber, Number, fast_key, import_key, key_of_nsn, listable

__all__ = [
    "KINDS",
    "BadImportFile",
    "Chunk",
    "ConsentEntry",
    "ConsentRow",
    "ContractEntry",
    "ContractRow",
    "DncRow",
    "Header",
    "OptoutRow",
    "Parsed",
    "Rejected",
    "chunks",
    "in_supported_years",
    "ms_exact",
    "parse",
    "quoted",
    "read_header",
    "records",
]

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
# How much of a line a message quotes: enough to recognise it, never a whole broken line.
QUOTED_CHARS = 80
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


def ms_exact(moment: datetime) -> int:
    """Milliseconds since 1970 of an aware instant of the supported years, rounded down,
    without the float rounding of `timestamp() * 1000`."""
    return math.floor(moment.timestamp()) * 1000 + moment.microsecond // 1000


def in_supported_years(moment: datetime) -> bool:
    return _EARLIEST <= moment.year <= _LATEST


def is_valid_principal(value: str) -> bool:
    return bool(_PRINCIPAL.match(value))


def is_valid_ref(value: str) -> bool:
    return bool(_REF.match(value))


@dataclass(frozen=True, slots=True)
class Header:
    kind: str
    columns: tuple[str, ...]
    delimiter: str


def quoted(text: str) -> str:
    """`text` quoted for a one-line message, cut after QUOTED_CHARS characters."""
    if len(text) <= QUOTED_CHARS:
        return repr(text)
    return f"{text[:QUOTED_CHARS]!r}..."


def read_header(kind: str, line: str | None) -> Header:
    """Check a file's first line for `kind`; None means the file is empty."""
    if kind not in HEADERS:
        raise BadImportFile(f"unknown import kind {kind!r}: use one of {', '.join(KINDS)}")
    if line is None:
        raise BadImportFile("the file is empty: a header row is required")
    columns, required = HEADERS[kind]
    expected = f"{','.join(columns)!r}" + (
        f" (or {','.join(columns[:required])!r})" if required < len(columns) else ""
    )
    line = line.lstrip("\ufeff").rstrip("\r\n")
    if len(line) > MAX_LINE_CHARS:
        too_long = f"over {MAX_LINE_CHARS} characters"
        raise BadImportFile(f"line 1: header {quoted(line)} ({too_long}) is not {expected}")
    delimiter = ";" if line.count(";") > line.count(",") else ","
    try:
        fields = next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:  # a carriage return inside the line, for one
        raise BadImportFile(f"line 1: header {quoted(line)} (not CSV) is not {expected}") from None
    header = [h.strip().lower() for h in fields]
    if tuple(header) not in (columns, columns[:required]):
        raise BadImportFile(f"line 1: header {quoted(','.join(header))} is not {expected}")
    return Header(kind, tuple(header), delimiter)


class Rejected(NamedTuple):
    message: str
    text: str  # the line as read, for the rejects file


_NOT_CSV = f"line longer than {MAX_LINE_CHARS} characters, or not CSV"


class _Line:
    """One line through the general path: a row, a Rejected, or None for a blank line."""

    def __init__(self, header: Header, zone: ZoneInfo) -> None:
        self._parser = _ROW_PARSERS[header.kind]
        self._delimiter = header.delimiter
        self._width = len(header.columns)
        self._zone = zone

    def __call__(self, line: str) -> Any:
        # The line break is not part of the line: 4,096 characters and CRLF is not too long.
        line = line.rstrip("\r\n")
        if len(line) > MAX_LINE_CHARS:
            return Rejected(_NOT_CSV, line[:MAX_LINE_CHARS])
        if '"' in line:
            # One reader per line: a stray quote spoils one line, not the rest of the file.
            try:
                fields = next(csv.reader([line], delimiter=self._delimiter), [""])
            except csv.Error:
                return Rejected(_NOT_CSV, line)
        else:
            fields = line.split(self._delimiter)  # what csv gives for a line without quotes
        if len(fields) != self._width:
            if len(fields) == 1 and not fields[0].strip():
                return None
            return Rejected(f"{len(fields)} fields, expected {self._width}", line)
        if self._width == 1 and not fields[0].strip():
            return None
        try:
            return self._parser(fields, self._zone)
        except _BadLine as exc:
            return Rejected(str(exc), line)


def records(header: Header, lines: Iterable[str], zone: ZoneInfo) -> Iterator[tuple[int, Any]]:
    """(line number, row or Rejected) for each non-blank line after the header.

    Streams: holds one line at a time. Line numbers count the header as line 1, as a
    spreadsheet shows them; blank lines are skipped but counted.
    """
    one = _Line(header, zone)
    for number, line in enumerate(lines, start=2):
        row = one(line)
        if row is not None:
            yield number, row


@dataclass
class Chunk:
    """Up to `size` good lines of a file, and the bad lines met on the way."""

    rows: list[Any] = field(default_factory=list)
    # The plain lines of big files, reduced to keys: do-not-call numbers without a
    # reason; registry results, listed or not.
    keys: list[str] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)
    last_line: int = 1
    # Consents and contracts given to a Sink: how many rows it took, and a principal it
    # needs the id of before the next line (the consumer tells it, then asks for more).
    gathered: int = 0
    needs: str = ""

    def __len__(self) -> int:
        return len(self.rows) + len(self.keys) + len(self.listed) + self.gathered


class Sink(Protocol):
    """Where consent and contract lines go as they are read (store/packed.py's Gathered):
    the plain lines of a block packed in one loop (`gather_*`, which stops at the first
    line it leaves to the general path or whose principal it has no id for), the others
    one entry at a time, in file order."""

    def knows(self, principal: str) -> bool: ...

    def gather_consents(self, found: list[Any], start: int, plain: FastRows) -> int: ...

    def gather_contracts(self, found: list[Any], start: int, plain: FastRows) -> int: ...

    def add_entry(self, entry: Any) -> None: ...


# The registry's statuses as its files spell them: listed or not (what _bloctel_row
# decides for any status; others take the general path).
_STATUSES = {"OK": False, "ok": False, "Ok": False, "INSCRIT": True, "Inscrit": True}


def chunks(
    header: Header, lines: Iterable[str], zone: ZoneInfo, size: int, sink: Sink | None = None
) -> Iterator[Chunk]:
    """The file's rows, `size` at a time. Ten million lines must load in seconds, so the
    common lines of do-not-call and registry files take a tight loop (what `fast_key`
    does not recognise goes the general way, which gives the same row or the reason it is
    bad). Consents and contracts go to `sink` when there is one (the chunks then only
    count them), as entries in the chunks otherwise."""
    if header.kind in ("consent", "contract"):
        if sink is None:
            yield from _entry_chunks(header, lines, zone, size)
        else:
            yield from _sink_chunks(header, lines, zone, size, sink)
        return
    one = _Line(header, zone)
    chunk = Chunk()
    kind, width, delimiter = header.kind, len(header.columns), header.delimiter
    dnc = kind == "dnc" and width == 1
    bloctel = kind == "bloctel"
    number = 1
    for number, line in enumerate(lines, start=2):
        if dnc:
            key = fast_key(line.rstrip("\r\n"))
            if key is not None:
                chunk.keys.append(key)
                if len(chunk.keys) >= size:
                    chunk.last_line = number
                    yield chunk
                    chunk = Chunk()
                continue
        elif bloctel:
            fields = line.rstrip("\r\n").split(delimiter)
            if len(fields) == 3:
                telephone, ref, status = fields
                listed = _STATUSES.get(status)
                if listed is not None and (ref.isalnum() or not ref) and ref.isascii():
                    key = fast_key(telephone)
                    if key is not None:
                        (chunk.listed if listed else chunk.keys).append(key)
                        if len(chunk.keys) + len(chunk.listed) >= size:
                            chunk.last_line = number
                            yield chunk
                            chunk = Chunk()
                        continue
        row = one(line)
        if row is None:
            continue
        if type(row) is Rejected:
            chunk.rejected.append((number, row))
            continue
        if bloctel:
            (chunk.listed if row.listed else chunk.keys).append(row.key)
        else:
            chunk.rows.append(row)
        if len(chunk) >= size:
            chunk.last_line = number
            yield chunk
            chunk = Chunk()
    chunk.last_line = number
    yield chunk


def _entry_chunks(
    header: Header, lines: Iterable[str], zone: ZoneInfo, size: int
) -> Iterator[Chunk]:
    """Consents and contracts, a block of `size` lines a chunk (fewer rows where lines are
    blank or bad), as the loader's plain tuples (`consent_entry`, `contract_entry`), in
    file order (which row of a pair comes later matters)."""
    one = _Line(header, zone)
    fast = FastRows(header, zone)
    if header.kind == "consent":
        block_of: Callable[[list[str]], list[Any]] = fast.consents
        as_entry: Callable[[Any], Any] = consent_entry
    else:
        block_of, as_entry = fast.contracts, contract_entry
    block: list[str] = []
    first, number = 2, 1

    def chunk_of(block: list[str], first: int) -> Chunk:
        chunk = Chunk(last_line=first + len(block) - 1)
        entries = block_of(block)
        if None not in entries:
            chunk.rows = entries
            return chunk
        for offset, entry in enumerate(entries):
            if entry is None:
                row = one(block[offset])
                if row is None:
                    continue
                if type(row) is Rejected:
                    chunk.rejected.append((first + offset, row))
                    continue
                entry = as_entry(row)
            chunk.rows.append(entry)
        return chunk

    for number, line in enumerate(lines, start=2):
        block.append(line)
        # A line with no line break (the last, or one too long to be valid) ends a block:
        # the block is read as lines joined.
        if len(block) >= size or not line.endswith("\n"):
            yield chunk_of(block, first)
            block, first = [], number + 1
    yield chunk_of(block, first) if block else Chunk(last_line=number)


def _sink_chunks(
    header: Header, lines: Iterable[str], zone: ZoneInfo, size: int, sink: Sink
) -> Iterator[Chunk]:
    """As `_entry_chunks`, the rows given to `sink` as they are read, in file order:
    `size` lines at a time through `blocks`."""
    # Blocks of `size` lines taken whole (no Python step a line). A line with no line
    # break (one too long to be valid, cut) inside a block leaves the block's lines one
    # short of their line breaks: the block's text then does not match line for line,
    # and the block goes the general way, which rejects that line.
    lines = iter(lines)
    texts = (("".join(block), block) for block in iter(lambda: list(islice(lines, size)), []))
    yield from blocks(header, texts, zone, sink)


def blocks(
    header: Header,
    texts: Iterable[tuple[str, list[str] | None]],
    zone: ZoneInfo,
    sink: Sink,
    first: int = 2,
) -> Iterator[Chunk]:
    """Consents and contracts given to `sink` as they are read, in file order, a chunk a
    block of whole lines: (its text, its lines, or None to split the text at its line
    breaks when the general path needs them). The plain lines of a block in one loop,
    each other line through the general path (its entry, or the reason it is bad), a
    principal new to the sink announced first (Chunk.needs) so that its id is known
    before its first row is packed. `first`: the number of the first line (the header
    is line 1)."""
    if header.kind not in ("consent", "contract"):
        raise ValueError(header.kind)
    one = _Line(header, zone)
    plain = FastRows(header, zone)
    if header.kind == "consent":
        pattern, gather, as_entry = plain.consent_lines, sink.gather_consents, consent_entry
    else:
        pattern, gather = plain.contract_lines, sink.gather_contracts
        as_entry = contract_entry  # type: ignore[assignment]
    start = first
    for text, given in texts:
        block = given
        count = len(block) if block is not None else text.count("\n") + (text[-1:] != "\n")
        if not count:
            continue
        chunk = Chunk(last_line=first + count - 1)
        found = plain.found(pattern, text, count)
        at = 0
        while at < count:
            if found is not None:
                stop = gather(found, at, plain)
                chunk.gathered += stop - at
                at = stop
                if at == count:
                    break
            if block is None:
                block = _lines_of(text)
            row = one(block[at])
            if type(row) is Rejected:
                chunk.rejected.append((first + at, row))
            elif row is not None:
                entry = as_entry(row)
                if not sink.knows(entry[1]):
                    yield Chunk(last_line=first + at - 1, needs=entry[1])
                sink.add_entry(entry)
                chunk.gathered += 1
            at += 1
        yield chunk
        first += count
    if first == start:
        yield Chunk(last_line=start - 1)


def _lines_of(text: str) -> list[str]:
    """A block's lines, each with its line break (the last maybe without)."""
    lines = [line + "\n" for line in text.split("\n")]
    if text.endswith("\n"):
        del lines[-1]
    else:
        lines[-1] = lines[-1][:-1]
    return lines


def parse(kind: str, lines: Iterable[str], zone: ZoneInfo) -> Parsed[object]:
    """Parse a whole file in memory (small files, tests); `zone` interprets dates given
    without a time. `import` streams with read_header and records instead."""
    iterator = iter(lines)
    header = read_header(kind, next(iterator, None))
    parsed: Parsed[object] = Parsed()

    def counted() -> Iterator[str]:
        for line in iterator:
            parsed.lines += 1
            yield line

    for number, row in records(header, counted(), zone):
        if isinstance(row, Rejected):
            parsed.reject(number, row.message)
        else:
            parsed.rows.append(row)
    return parsed


def _number(value: str) -> Number:
    try:
        return listable(value)
    except InvalidNumber as exc:
        raise _BadLine(str(exc)) from None


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


class DncRow(NamedTuple):
    key: str  # the number's E.164 digits
    reason: str  # "" when the file gives none


class OptoutRow(NamedTuple):
    key: str
    listed: bool
    ref: str  # the registry's identifier of the line; checked, not stored (see data-model)


@dataclass(frozen=True, slots=True)
class ConsentRow:
    number: Number
    principal: str
    given_at: datetime
    expires_at: datetime | None
    proof_ref: str


@dataclass(frozen=True, slots=True)
class ContractRow:
    number: Number
    principal: str
    contract: Contract


# What an import of consents or contracts loads, one plain tuple a row (ten million of
# them go through): (number key, principal, given-at ms, expires-at ms or 0, proof
# reference) and (number key, principal, contract id, sector, start, end or None).
ConsentEntry = tuple[str, str, int, int, str]
ContractEntry = tuple[str, str, str, Sector, date, date | None]


def consent_entry(row: ConsentRow | ConsentEntry) -> ConsentEntry:
    if isinstance(row, tuple):
        return row
    expires = ms_exact(row.expires_at) if row.expires_at else 0
    return (row.number.key, row.principal, ms_exact(row.given_at), expires, row.proof_ref)


def contract_entry(row: ContractRow | ContractEntry) -> ContractEntry:
    if isinstance(row, tuple):
        return row
    c = row.contract
    return (row.number.key, row.principal, c.contract_id, c.sector, c.start, c.end)


_SECTOR_OF = {sector.value: sector for sector in Sector}
# Parsed instants and dates kept for the lines that repeat them (a file's dates mostly
# do); past this many the cache starts again.
_CACHED = 65_536


def _plain_lines(delimiter: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The plain consent and contract lines: numbers as `fast_key` reads them, instants as
    a date or an ISO 8601 date-time with seconds and an offset, free text of printable
    ASCII with nothing to strip. One regular expression over a block of lines: at ten
    million lines, splitting and checking each field in Python (or even matching one line
    at a time) cost more than all the rest."""
    d = re.escape(delimiter)
    number = r"(?:0|\+33|0033)([1-9][0-9]{5})([0-9]{3})"  # the last digits apart: a field
    principal = r"([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})"
    day = r"([0-9]{4}-[0-9]{2}-[0-9]{2})"
    instant = rf"{day}(?:T([0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}})([+-][0-9]{{2}}:[0-9]{{2}}|Z))?"
    allowed = "".join(
        re.escape(chr(c)) for c in range(0x21, 0x7F) if chr(c) not in ('"', "|", delimiter)
    )
    text = rf"([{allowed}](?:[ {allowed}]{{0,198}}[{allowed}])?)"
    sectors = "|".join(re.escape(sector.value) for sector in Sector)
    consent = rf"{number}{d}{principal}{d}{instant}{d}(?:{instant})?{d}{text}"
    contract = rf"{number}{d}{principal}{d}{text}{d}({sectors}){d}{day}{d}{day}?"
    # Every line of a block matches: a plain one with its groups, any other with none.
    return (
        re.compile(rf"^(?:{consent}\r?|.*)$", re.MULTILINE),
        re.compile(rf"^(?:{contract}\r?|.*)$", re.MULTILINE),
    )


class FastRows:
    """Consent and contract lines in their plain form (`_plain_lines`), parsed in a few
    microseconds. Anything else, valid or not, is None: the general path decides, with its
    message. What this accepts, the general path accepts the same
    (tests/test_fast_paths.py holds the two together).

    A Sink packing the plain lines itself (`lines` of `consent_lines` or
    `contract_lines`: a line's groups, the number's NSN in two, its first six digits
    and its last three) reads the instants through `instant`, or the caches `clocks`
    and `midnights` first, the dates through `day`, the country code through `code`."""

    def __init__(self, header: Header, zone: ZoneInfo) -> None:
        self.consent_lines, self.contract_lines = _plain_lines(header.delimiter)
        self._zone = zone
        self._days: dict[str, date | None] = {}
        self._local_midnights: dict[str, int] = {}  # "DAY" -> ms (or NOT_AN_INSTANT)
        self.midnights: dict[str, dict[str, int]] = {}  # OFFSET -> DAY -> ms (or that)
        self.clocks: dict[str, int] = {}  # "HH:MM:SS" -> seconds into the day (or -1)
        self.codes: dict[str, str] = {}  # an NSN's first five digits -> its country code

    def consents(self, block: list[str]) -> list[ConsentEntry | None]:
        """One entry per line of `block` (lines ending with a line break, but the last
        maybe), None where the general path must decide."""
        found = self.lines(self.consent_lines, block)
        if found is None:
            return [None] * len(block)
        codes, clocks, midnights = self.codes, self.clocks, self.midnights
        instant = self.instant
        out: list[ConsentEntry | None] = []
        append = out.append
        for (
            head,
            tail,
            principal,
            day,
            clock,
            offset,
            until,
            until_clock,
            until_offset,
            proof,
        ) in found:
            if not head:
                append(None)
                continue
            nsn = head + tail
            code = codes.get(nsn[:5])
            if code is None:
                code = codes[nsn[:5]] = key_of_nsn(nsn)[:-9]
            # The given instant, inline: every line has its own second.
            if clock:
                seconds = clocks.get(clock)
                days = midnights.get(offset)
                start = days.get(day) if days is not None else None
                if seconds is None or start is None:
                    given_ms = instant(day, clock, offset)
                elif seconds < 0 or start == NOT_AN_INSTANT:
                    given_ms = NOT_AN_INSTANT
                else:
                    given_ms = start + seconds * 1000
            else:
                given_ms = instant(day, "", "")
            if given_ms == NOT_AN_INSTANT:
                append(None)
            elif not until:
                append((code + nsn, principal, given_ms, 0, proof))
            else:
                expires_ms = instant(until, until_clock, until_offset)
                if expires_ms == NOT_AN_INSTANT or expires_ms <= given_ms:
                    append(None)
                else:
                    append((code + nsn, principal, given_ms, expires_ms, proof))
        return out

    def code(self, nsn: str) -> str:
        """The country code of an NSN (its first five digits are enough)."""
        code = self.codes.get(nsn[:5])
        if code is None:
            code = self.codes[nsn[:5]] = key_of_nsn(nsn[:5] + "0000")[:-9]
        return code

    def contracts(self, block: list[str]) -> list[ContractEntry | None]:
        """As `consents`."""
        found = self.lines(self.contract_lines, block)
        if found is None:
            return [None] * len(block)
        codes, day_of = self.codes, self.day
        out: list[ContractEntry | None] = []
        append = out.append
        for head, tail, principal, contract_id, sector, start_day, end_day in found:
            if not head:
                append(None)
                continue
            nsn = head + tail
            code = codes.get(nsn[:5])
            if code is None:
                code = codes[nsn[:5]] = key_of_nsn(nsn)[:-9]
            start = day_of(start_day)
            end = day_of(end_day) if end_day else None
            if start is None or (end_day and (end is None or end < start)):
                append(None)
            else:
                append((code + nsn, principal, contract_id, _SECTOR_OF[sector], start, end))
        return out

    @staticmethod
    def lines(pattern: re.Pattern[str], block: list[str]) -> list[Any] | None:
        """The pattern's groups of each line of `block`."""
        return FastRows.found(pattern, "".join(block), len(block))

    @staticmethod
    def found(pattern: re.Pattern[str], text: str, count: int) -> list[Any] | None:
        """The pattern's groups of each line of `text`, `count` lines (None: not
        `count`, a line without its line break inside)."""
        if not text.endswith("\n"):
            text += "\n"
        found = pattern.findall(text)
        # One result a line, and one for the empty end after the last line break.
        if len(found) != count + 1:
            return None
        del found[-1]
        return found

    def instant(self, day: str, clock: str, offset: str) -> int:
        """ms since 1970 of a date (`clock` "": its midnight here) or a date-time with its
        offset; NOT_AN_INSTANT for what the general path refuses. The day with its
        offset, and the time of day, are each parsed once."""
        if not clock:
            start = self._local_midnights.get(day)
            if start is None:
                if len(self._local_midnights) >= _CACHED:
                    self._local_midnights.clear()
                start = self._local_midnights[day] = self._midnight(day, "")
            return start
        seconds = self.clocks.get(clock)
        if seconds is None:
            if len(self.clocks) >= _CACHED:
                self.clocks.clear()
            seconds = self.clocks[clock] = _seconds_into_day(clock)
        days = self.midnights.get(offset)
        if days is None:
            if len(self.midnights) >= 64:  # offsets: a handful
                self.midnights.clear()
            days = self.midnights[offset] = {}
        start = days.get(day)
        if start is None:
            if len(days) >= _CACHED:
                days.clear()
            start = days[day] = self._midnight(day, offset)
        if seconds < 0 or start == NOT_AN_INSTANT:
            return NOT_AN_INSTANT
        return start + seconds * 1000

    def _midnight(self, day: str, offset: str) -> int:
        """ms of a day's midnight: in the zone (`offset` ""), or at that offset."""
        text = f"{day}T00:00:00{offset}" if offset else day
        try:
            return ms_exact(_instant("", text, self._zone))
        except _BadLine:
            return NOT_AN_INSTANT

    def day(self, value: str) -> date | None:
        cache = self._days
        if value in cache:
            return cache[value]
        try:
            found: date | None = _date("", value)
        except _BadLine:
            found = None
        if len(cache) >= _CACHED:
            cache.clear()
        cache[value] = found
        return found


NOT_AN_INSTANT = -(1 << 62)


def _seconds_into_day(text: str) -> int:
    """ "HH:MM:SS" as `datetime.fromisoformat` reads it, or -1."""
    hours, minutes, seconds = text[:2], text[3:5], text[6:]
    digits = hours + minutes + seconds
    if text[2:3] != ":" or text[5:6] != ":" or not (digits.isdigit() and digits.isascii()):
        return -1
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
        return -1
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds)


def _key(value: str) -> str:
    try:
        return import_key(value.strip())
    except InvalidNumber as exc:
        raise _BadLine(str(exc)) from None


def _dnc_row(fields: list[str], zone: ZoneInfo) -> DncRow:
    reason = fields[1].strip() if len(fields) > 1 else ""
    if reason and not _REF.match(reason):
        raise _BadLine("reason must be at most 200 characters, without '|' or control characters")
    return DncRow(_key(fields[0]), reason)


def _consent_row(fields: list[str], zone: ZoneInfo) -> ConsentRow:
    number, principal, given_at, expires_at, proof_ref = (f.strip() for f in fields)
    given = _instant("given_at", given_at, zone)
    expires = _instant("expires_at", expires_at, zone) if expires_at else None
    if expires is not None and expires <= given:
        raise _BadLine("expires_at must come after given_at")
    proof = _ref("proof_ref", proof_ref)
    if not proof:
        raise _BadLine("proof_ref is required: the professional bears the burden of proof")
    return ConsentRow(_number(number), _principal(principal), given, expires, proof)


def _contract_row(fields: list[str], zone: ZoneInfo) -> ContractRow:
    number, principal, contract_id, sector_name, start_day, end_day = (f.strip() for f in fields)
    contract_id = _ref("contract_id", contract_id)
    if not contract_id:
        raise _BadLine("contract_id is required")
    try:
        sector = Sector(sector_name)
    except ValueError:
        allowed = ", ".join(s.value for s in Sector)
        raise _BadLine(f"sector {sector_name!r} is not one of {allowed}") from None
    start = _date("start", start_day)
    end = _date("end", end_day) if end_day else None
    if end is not None and end < start:
        raise _BadLine("end must not come before start")
    return ContractRow(
        _number(number), _principal(principal), Contract(contract_id, sector, start, end)
    )


def _bloctel_row(fields: list[str], zone: ZoneInfo) -> OptoutRow:
    telephone, identifiant, statut = fields
    status = statut.strip().upper()
    if not status:
        raise _BadLine("Statut is empty")
    ref = identifiant.strip()
    if ref and not _REF.match(ref):
        raise _BadLine(
            "Identifiant must be at most 200 characters, without '|' or control characters"
        )
    # "OK" is the registry's "not listed, you may call". Anything else is read as listed:
    # a status we do not know must not let a call through.
    return OptoutRow(_key(telephone), status != "OK", ref)


_ROW_PARSERS: dict[str, Callable[[list[str], ZoneInfo], object]] = {
    "dnc": _dnc_row,
    "consent": _consent_row,
    "contract": _contract_row,
    "bloctel": _bloctel_row,
}
