"""Read a lead file: any CSV with a header row, its rows kept as the bytes they were.

A scrub copies the rows it keeps byte for byte (`dialguard scrub --out`), so rows are
never re-serialised: each comes as its raw bytes, line break included, with the one cell
that holds the number. A row is one physical line unless a quoted field holds a line
break; the csv module decides where such a row ends, so a row is what any CSV reader
makes of it.

Pure over byte lines (`physical_lines` reads them from a file, bounded). The file's
encoding is not checked (a row is copied, not decoded): the header's names and the
numbers are read as UTF-8, or as Latin-1 when they are not UTF-8, which any
ASCII-compatible export (Windows-1252 from a spreadsheet) gives correctly for digits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from dialguard.import_files import quoted

__all__ = [
    "MAX_LINE_BYTES",
    "NUMBER_COLUMNS",
    "BadLeadFile",
    "LeadHeader",
    "Row",
    "physical_lines",
    "read_header",
    "rows",
    "without_newline",
]

# Names a number column goes by (compared without case, accents, spaces, `_`, `-`, `.`).
NUMBER_COLUMNS = (
    "number", "phone", "phonenumber", "phone_number", "telephone", "tel", "numero",
    "numerodetelephone", "numerotelephone", "msisdn", "e164", "mobile", "portable", "gsm",
    "cellphone",
)  # fmt: skip
_NUMBER_NAMES = frozenset(n.replace("_", "") for n in NUMBER_COLUMNS)

# No lead row comes near this: a physical line this long is a file that is not CSV (a
# spreadsheet's binary, one line without any break), refused before it is held whole.
MAX_LINE_BYTES = 1 << 20
# A row a quoted field spreads over several lines ends within this, or its quote was
# never closed (under the csv module's own limit on a field, 128 KiB, which would make
# the rest of such a file rows of its own).
MAX_ROW_BYTES = 100_000
_BLOCK = 1 << 20
_DELIMITERS = (",", ";", "\t")
_BOM = b"\xef\xbb\xbf"


class BadLeadFile(ValueError):
    """The file is not a CSV with a header row and a number column (one line)."""


@dataclass(frozen=True, slots=True)
class LeadHeader:
    raw: bytes  # the header row as in the file (byte-order mark and line break included)
    columns: tuple[str, ...]
    delimiter: str
    number_column: int  # index into columns
    newline: bytes  # the header's line break: what a row written after it ends with

    @property
    def number_name(self) -> str:
        return self.columns[self.number_column]


# One row: (the physical line it starts on, the header being line 1; its bytes as in
# the file, line break included, none on a last line without one; the number column's
# cell, None when the row has none; why there is no number, '' when there is one or the
# row is a blank line). A plain tuple: a million of them are made.
Row = tuple[int, bytes, str | None, str]


def without_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    return raw[:-1] if raw.endswith(b"\n") else raw


def physical_lines(
    handle: IO[bytes], digest: hashlib._Hash | None = None, block_size: int = _BLOCK
) -> Iterator[bytes]:
    """The file's lines, each with its `\\n` (none on a last line without one); `digest`
    takes every byte read. BadLeadFile for a line over MAX_LINE_BYTES."""
    carry = b""
    number = 0
    while block := handle.read(block_size):
        if digest is not None:
            digest.update(block)
        lines = io.BytesIO(carry + block if carry else block).readlines()
        carry = lines.pop() if not lines[-1].endswith(b"\n") else b""
        if lines and max(map(len, lines)) > MAX_LINE_BYTES:
            for line in lines:
                number += 1
                if len(line) > MAX_LINE_BYTES:
                    raise BadLeadFile(f"line {number}: over {MAX_LINE_BYTES} bytes")
                yield line
        else:
            number += len(lines)
            yield from lines  # at C speed: a file of a million lines
        if len(carry) > MAX_LINE_BYTES:
            raise BadLeadFile(f"line {number + 1}: over {MAX_LINE_BYTES} bytes")
    if carry:
        yield carry


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _name(column: str) -> str:
    """A column name as names are compared: no case, accents, spaces or `_-.`."""
    plain = unicodedata.normalize("NFKD", column.strip().lower())
    return "".join(c for c in plain if c.isalnum())


def read_header(lines: Iterator[bytes], column: str | None = None) -> LeadHeader:
    """The header row of a lead file (`lines`: physical lines, its first at the start),
    with the number column: `column` when given, else the one column named as numbers
    are (NUMBER_COLUMNS). BadLeadFile, one line, otherwise."""
    first = next(lines, None)
    if first is None or not first.strip(b"\r\n" + _BOM):
        raise BadLeadFile("the file is empty: a CSV file with a header row is required")
    body = without_newline(first)
    if b"\0" in body:
        raise BadLeadFile(
            "line 1: not a CSV file (NUL bytes: a spreadsheet's own format, or UTF-16 text;"
            " save it as CSV UTF-8)"
        )
    if b"\r" in body:
        raise BadLeadFile(
            "line 1: a carriage return inside the line: lines end with CR alone (save the"
            " file with LF or CRLF line breaks)"
        )
    bom = _BOM if first.startswith(_BOM) else b""
    text = _text(body.removeprefix(bom))
    delimiter = max(_DELIMITERS, key=text.count)  # ties go to ",": the first
    raw, fields, problem = _record(first[len(bom) :], lines, delimiter, 1)
    raw = bom + raw
    if problem:
        raise BadLeadFile(f"line 1: header is not CSV ({problem})")
    assert fields is not None
    columns = tuple(_text(f.encode("latin-1")).strip() for f in fields)
    if not any(columns):
        raise BadLeadFile("line 1: the header row has no column names")
    names = [_name(c) for c in columns]
    listed = ", ".join(quoted(c) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
    if column is not None:
        found = [i for i, n in enumerate(names) if n == _name(column) and n]
        if not found:
            raise BadLeadFile(f"line 1: no column {column!r} (the columns are {listed})")
    else:
        found = [i for i, n in enumerate(names) if n in _NUMBER_NAMES]
        if not found:
            raise BadLeadFile(
                f"line 1: no number column among {listed}: name it phone, number or"
                " telephone, or give --column NAME (a header row is required)"
            )
    if len(found) > 1:
        both = ", ".join(quoted(columns[i]) for i in found)
        raise BadLeadFile(f"line 1: several number columns ({both}): choose one with --column")
    newline = raw[len(without_newline(raw)) :] or b"\n"  # a header alone may have none
    return LeadHeader(raw, columns, delimiter, found[0], newline)


def rows(lines: Iterator[bytes], header: LeadHeader, first_line: int = 2) -> Iterator[Row]:
    """Every row after the header, blank lines included (number None, problem ''):
    joined, the rows' raw bytes are the rest of the file exactly."""
    delimiter = header.delimiter
    sep = delimiter.encode()
    column = header.number_column
    number = first_line - 1
    for line in lines:
        number += 1
        if b'"' not in line:
            # What the csv module makes of a line without quotes, done by split: the
            # number's cell, when a cell follows it, holds none of the line break.
            cells = line.split(sep, column + 1)
            if len(cells) > column + 1 and (
                b"\r" not in line or (line[-2:] == b"\r\n" and b"\r" not in line[:-2])
            ):
                value = cells[column]
                try:
                    yield (number, line, value.decode("utf-8"), "")
                except UnicodeDecodeError:
                    yield (number, line, value.decode("latin-1"), "")
                continue
            body = line[:-2] if line[-2:] == b"\r\n" else line[:-1] if line[-1:] == b"\n" else line
            if b"\r" not in body:
                if not body:
                    yield (number, line, None, "")
                    continue
                cells = body.split(sep, column + 1)
                if len(cells) > column:
                    yield (number, line, _text(cells[column]), "")
                else:
                    yield (number, line, None, _short(len(cells), header))
                continue
        start = number
        raw, fields, problem = _record(line, lines, delimiter, start)
        number += raw.count(b"\n") - (1 if raw.endswith(b"\n") else 0)
        if problem:
            yield (start, raw, None, f"not CSV ({problem})")
        elif not fields:
            yield (start, raw, None, "")
        elif len(fields) > column:
            yield (start, raw, _text(fields[column].encode("latin-1")), "")
        else:
            yield (start, raw, None, _short(len(fields), header))


def _short(count: int, header: LeadHeader) -> str:
    return f"no {header.number_name!r} cell ({count} of {len(header.columns)} fields)"


def _record(
    first: bytes, lines: Iterator[bytes], delimiter: str, line: int
) -> tuple[bytes, list[str] | None, str]:
    """One row read by the csv module from `first` and as many more lines as a quoted
    field needs: (its raw bytes, its fields as Latin-1 text, why it is not CSV or '').
    BadLeadFile when a quoted field is never closed."""
    taken = [first]
    size = len(first)

    def feed() -> Iterator[str]:
        nonlocal size
        # Latin-1 maps each byte to one character: the csv module sees the bytes (its
        # delimiters, quotes and line breaks are ASCII, never part of a UTF-8 character).
        yield first.decode("latin-1")
        for more in lines:
            taken.append(more)
            size += len(more)
            if size > MAX_ROW_BYTES:
                raise BadLeadFile(
                    f"line {line}: a row over {MAX_ROW_BYTES} bytes: a quoted field opened"
                    " there is not closed (a stray quote?)"
                )
            yield more.decode("latin-1")
        # The reader asks for more only inside a quoted field: it runs to the end.
        raise BadLeadFile(
            f"line {line}: a quoted field opened there is never closed: {quoted(_text(first))}"
        )

    try:
        fields = next(csv.reader(feed(), delimiter=delimiter, strict=False), [])
    except csv.Error as exc:
        return b"".join(taken), None, str(exc)
    return b"".join(taken), fields, ""
