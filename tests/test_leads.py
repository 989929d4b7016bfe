"""Reading lead files (dialguard.leads): any CSV with a header row, rows kept as bytes.

The property: whatever the cells (quotes, delimiters, line breaks inside quoted fields,
any text), the quoting, the delimiter, the line breaks (LF or CRLF), a byte-order mark
or a last line without its break, each row's number cell is what the csv module reads,
and the rows' raw bytes, joined after the header's, are the file exactly. Then the files
that are refused, each with its one line.
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialguard.leads import (
    MAX_LINE_BYTES,
    BadLeadFile,
    LeadHeader,
    physical_lines,
    read_header,
    rows,
)

cells = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12
) | st.sampled_from(['"', '""', ",", ";", "\t", "\n", "\r\n", "\r", " 06 12 ", 'a"b', ""])


@st.composite
def lead_files(draw: st.DrawFn) -> tuple[bytes, list[list[str]], int, str]:
    """(the file's bytes, its rows as the csv module reads them, the number column,
    the delimiter)."""
    width = draw(st.integers(1, 5))
    # A header of one name shows no delimiter: such a file is read with ",".
    delimiter = draw(st.sampled_from([",", ";", "\t"])) if width > 1 else ","
    column = draw(st.integers(0, width - 1))
    names = [f"col{i}" for i in range(width)]
    names[column] = draw(st.sampled_from(["phone", "Téléphone", "NUMBER", "tel", "msisdn"]))
    data: list[list[str]] = draw(
        st.lists(st.lists(cells, min_size=0, max_size=width + 1), min_size=0, max_size=8)
    )
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    quoting: Literal[0, 1, 2] = draw(
        st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])
    )
    if newline == "\n" and quoting == csv.QUOTE_MINIMAL:
        # This writer leaves a carriage return alone unquoted: a line break for readers
        # of the whole text, not CSV for a reader of lines (test_a_carriage_return...).
        data = [[c.replace("\r\n", "\n").replace("\r", "") for c in row] for row in data]
    text = io.StringIO(newline="")
    writer = csv.writer(text, delimiter=delimiter, lineterminator=newline, quoting=quoting)
    writer.writerow(names)
    writer.writerows(data)
    content = text.getvalue().encode("utf-8")
    if draw(st.booleans()):
        content = b"\xef\xbb\xbf" + content
    cut = draw(st.booleans())
    if data and cut:  # a last line without its line break
        content = content.removesuffix(b"\n").removesuffix(b"\r")
    expected = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline=""),
                               delimiter=delimiter))  # fmt: skip
    return content, expected, column, delimiter


@settings(max_examples=400, deadline=None)
@given(lead_files(), st.integers(1, 64))
def test_rows_are_what_csv_reads_and_their_bytes_are_the_file(
    made: tuple[bytes, list[list[str]], int, str], block_size: int
) -> None:
    content, expected, column, delimiter = made
    digest = hashlib.sha256()
    lines = physical_lines(io.BytesIO(content), digest, block_size)
    header = read_header(lines)
    assert header.delimiter == delimiter
    assert header.number_column == column
    assert list(header.columns) == [c.strip() for c in expected[0]]
    found = list(rows(lines, header))
    assert header.raw + b"".join(raw for _, raw, _, _ in found) == content
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()
    assert len(found) == len(expected) - 1
    for (_, _, number, problem), cells_read in zip(found, expected[1:], strict=True):
        if not cells_read:
            assert (number, problem) == (None, "")  # a blank line
        elif len(cells_read) > column:
            assert number == cells_read[column]
            assert problem == ""
        else:
            assert number is None
            assert problem.startswith(f"no {header.number_name!r} cell")


Found = list[tuple[int, str | None, str]]


def read(content: bytes, column: str | None = None) -> tuple[LeadHeader, Found]:
    lines = physical_lines(io.BytesIO(content))
    header = read_header(lines, column)
    return header, [(line, number, problem) for line, _, number, problem in rows(lines, header)]


def test_line_numbers_count_physical_lines() -> None:
    content = b'id,phone\r\n1,0612345678\r\n"2\r\nsecond line",0612345679\r\n\r\n4,\r\n5'
    header, found = read(content)
    assert header.newline == b"\r\n"
    assert found == [
        (2, "0612345678", ""),
        (3, "0612345679", ""),
        (5, None, ""),
        (6, "", ""),
        (7, None, "no 'phone' cell (1 of 2 fields)"),
    ]


def test_a_carriage_return_alone_outside_quotes_makes_a_row_without_a_number() -> None:
    # Lines end with LF or CRLF; a CR elsewhere outside quotes is a broken export.
    _, found = read(b"phone,x\n06\r12,y\n0612345678,z\n")
    assert found[0][1] is None and found[0][2].startswith("not CSV (new-line character")
    assert found[1] == (3, "0612345678", "")
    # A CR after the number's cell is read as the csv module reads it: inside the line,
    # no row; ending it (before its LF, or a last line's without one), the line's end.
    _, found = read(b"phone,x\n0612345678,y\rz\n")
    assert found[0][1] is None and found[0][2].startswith("not CSV")
    for content in (b"phone,x\n0612345678,y\r\r\n", b"phone,x\n0612345678,y\r"):
        _, found = read(content)
        assert found == [(2, "0612345678", "")], content


@pytest.mark.parametrize(
    ("header", "column", "found"),
    [
        ("Nom;Prénom;Téléphone", None, "Téléphone"),
        ("id,Phone Number,city", None, "Phone Number"),
        ("id,numéro de téléphone", None, "numéro de téléphone"),
        ("TEL\tNAME", None, "TEL"),
        ('"id","msisdn"', None, "msisdn"),
        ("id,phone_number,phone_code", None, "phone_number"),
        ("id,fixe,portable", "Portable", "portable"),
        ("id,Mobile,Phone", "mobile", "Mobile"),
    ],
)
def test_the_number_column_by_its_name(header: str, column: str | None, found: str) -> None:
    parsed, _ = read(header.encode() + b"\n", column)
    assert parsed.number_name == found


def test_header_names_in_windows_1252_are_read() -> None:
    parsed, found = read("Nom;Téléphone\r\nHélène;0612345678\r\n".encode("cp1252"))
    assert parsed.number_name == "Téléphone"
    assert found == [(2, "0612345678", "")]


@pytest.mark.parametrize(
    ("content", "column", "message"),
    [
        (b"", None, "the file is empty: a CSV file with a header row is required"),
        (b"\xef\xbb\xbf\r\n", None, "the file is empty: a CSV file with a header row is required"),
        ("phone\n".encode("utf-16"), None, "line 1: not a CSV file (NUL bytes"),
        (b"PK\x03\x04\x14\x00\x06\x00", None, "line 1: not a CSV file (NUL bytes"),
        (b"phone\r0612345678\r", None, "line 1: a carriage return inside the line"),
        (b"name,city\nA,Paris\n", None, "line 1: no number column among 'name', 'city': name"),
        (b"0612345678,Paris\n", None, "line 1: no number column among '0612345678', 'Paris'"),
        (b",,\n", None, "line 1: the header row has no column names"),
        (b"phone,mobile\n", None, "line 1: several number columns ('phone', 'mobile')"),
        (b"phone,Phone\n", "PHONE", "line 1: several number columns ('phone', 'Phone')"),
        (b"name,phone\n", "mobile", "line 1: no column 'mobile' (the columns are 'name', 'phone')"),
        (b'phone,"name\n', None, "line 1: a quoted field opened there is never closed"),
        (b'phone\n"0612345678\n1\n', None, "line 2: a quoted field opened there is never closed"),
        (b"phone\n" + b"0" * (MAX_LINE_BYTES + 1), None, f"line 2: over {MAX_LINE_BYTES} bytes"),
        (b"phone\n" + b"0" * (MAX_LINE_BYTES + 1) + b"\n", None, "line 2: over"),
        (b'phone\n"' + b"0\n" * 60_000, None, "line 2: a row over 100000 bytes"),
    ],
)
def test_files_refused_with_one_line(content: bytes, column: str | None, message: str) -> None:
    with pytest.raises(BadLeadFile) as refused:
        read(content, column)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
