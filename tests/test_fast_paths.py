"""The import's fast paths give exactly what the general paths give.

A 10-million-line file takes `numbers.fast_key` and the tight loop of `imports.chunks`;
anything they do not recognise goes the general way. A difference would load a number
under another key than the one a call looks up: a listed number let through.
"""

from __future__ import annotations

import io
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialguard import import_reading
from dialguard.import_files import (
    BadImportFile,
    DncRow,
    OptoutRow,
    Rejected,
    blocks,
    chunks,
    consent_entry,
    contract_entry,
    read_header,
    records,
)
from dialguard.numbers import InvalidNumber, fast_key, import_key, normalise
from dialguard.store.packed import MAX_ENTRIES, Gathered

PARIS = ZoneInfo("Europe/Paris")

digits = st.text(alphabet="0123456789", min_size=0, max_size=14)
# Spellings near the fast ones: right and wrong lengths, prefixes, a stray character.
near = st.one_of(
    digits,
    digits.map(lambda d: "0" + d),
    digits.map(lambda d: "+33" + d),
    digits.map(lambda d: "0033" + d),
    digits.map(lambda d: "+" + d),
    st.text(alphabet="0123456789 +.-/()\u00a0١a", max_size=16),
    # Spaced out past the 40 characters normalise reads at all.
    st.tuples(st.from_regex(r"0[1-9][0-9]{8}", fullmatch=True), st.integers(1, 5)).map(
        lambda p: (" " * p[1]).join(p[0])
    ),
)


@settings(max_examples=3000)
@given(near)
def test_fast_key_is_normalise_or_steps_aside(text: str) -> None:
    key = fast_key(text)
    if key is None:
        return
    assert key == normalise(text).key


@settings(max_examples=2000)
@given(near)
def test_import_key_is_normalise_and_refuses_what_is_never_blocked(text: str) -> None:
    try:
        expected = normalise(text)
    except InvalidNumber:
        with pytest.raises(InvalidNumber):
            import_key(text)
        return
    if expected.never_blocked:
        with pytest.raises(InvalidNumber, match="never blocked"):
            import_key(text)
    else:
        assert import_key(text) == expected.key


@pytest.mark.parametrize(
    "spelling",
    ["0612345678", "06 12 34 56 78", "+33612345678", "0033612345678", "+33 6 12 34 56 78"],
)
def test_the_common_spellings_take_the_fast_path(spelling: str) -> None:
    assert fast_key(spelling.replace(" ", "")) == "33612345678"


def test_overseas_numbers_get_their_own_code_on_the_fast_path() -> None:
    assert fast_key("0692123456") == "262692123456"  # Réunion mobile
    assert fast_key("+33696123456") == "596696123456"  # Martinique: the NSN decides
    assert fast_key("0709351234") == "262709351234"  # Mayotte: 070935-070937
    assert fast_key("0709312345") == "594709312345"  # Guyane: 070930-070933


lines = st.lists(
    st.one_of(near, st.just(""), st.just("  "), st.just('"0612345678"'), st.just("061;2")),
    max_size=30,
)


def _by_chunks(kind: str, header_line: str, body: list[str], size: int) -> list[object]:
    header = read_header(kind, header_line)
    out: list[object] = []
    for chunk in chunks(header, iter(body), PARIS, size):
        out += [("bad", n, r.message) for n, r in chunk.rejected]
        out += chunk.rows
        if kind == "dnc":
            out += [DncRow(k, "") for k in chunk.keys]
        else:
            out += [("clear", k) for k in chunk.keys] + [("listed", k) for k in chunk.listed]
    return out


def _by_records(kind: str, header_line: str, body: list[str]) -> list[object]:
    out: list[object] = []
    for number, row in records(read_header(kind, header_line), iter(body), PARIS):
        if isinstance(row, Rejected):
            out.append(("bad", number, row.message))
        elif isinstance(row, OptoutRow):
            out.append(("listed" if row.listed else "clear", row.key))
        else:
            out.append(row)
    return out


def _key_of(item: object) -> str:
    return repr(item)


@settings(max_examples=300)
@given(lines, st.integers(min_value=1, max_value=7))
def test_dnc_chunks_hold_what_records_give(body: list[str], size: int) -> None:
    body = [line + "\n" for line in body]
    got = _by_chunks("dnc", "number", body, size)
    expected = _by_records("dnc", "number", body)
    # Chunks group keys apart from rows; the same multiset either way.
    assert sorted(map(_key_of, got)) == sorted(map(_key_of, expected))


statuses = st.sampled_from(["OK", "ok", "INSCRIT", "Listed", "", "O K", "1"])
refs = st.sampled_from(["R1", "", "REQ-2", "a|b", "é"])


@settings(max_examples=300)
@given(st.lists(st.tuples(near, refs, statuses), max_size=20), st.integers(1, 5))
def test_bloctel_chunks_hold_what_records_give(rows: list[tuple[str, str, str]], size: int) -> None:
    body = [";".join(row) + "\r\n" for row in rows]
    got = _by_chunks("bloctel", "telephone;identifiant;statut", body, size)
    expected = _by_records("bloctel", "telephone;identifiant;statut", body)
    assert sorted(map(_key_of, got)) == sorted(map(_key_of, expected))


def test_chunks_are_cut_at_the_size_and_keep_line_numbers() -> None:
    body = ["0612345678\n", "bad\n", "\n", "0612345679\n", "0612345670\n"]
    got = list(chunks(read_header("dnc", "number"), iter(body), PARIS, 2))
    assert [len(c) for c in got] == [2, 1]
    assert got[0].rejected[0][0] == 3  # the header is line 1
    assert got[-1].last_line == 6


# --- consents and contracts: plain lines take a fast path, the same rows come out ------------

consent_numbers = st.one_of(
    st.sampled_from(["0612345678", "+33612345678", "0033612345678", "0692123456", "112"]),
    near,
)
principals = st.sampled_from(["ACME", "acme.fr", "A B", "", " ACME", "x" * 65, "é"])
instants = st.sampled_from(
    [
        "2026-09-01",
        "2026-09-01T12:30:00+02:00",
        "2026-09-01T12:30:00Z",
        "2026-09-01T12:30:00",
        "2026-09-01T12:30:00.123456+02:00",
        "2026-03-29T02:30:00",  # a time the clocks skip in Paris
        " 2026-09-01",
        "2026-9-1",
        "1969-12-31",
        "1970-01-01",
        "2199-12-31T23:59:59+00:00",
        "2200-01-01",
        "yesterday",
        "",
    ]
)
texts = st.one_of(
    st.sampled_from(["crm:42", "WEB-0000000001", "", " x", "x ", "a|b", "é", "x" * 200, "x" * 201]),
    st.text(max_size=12),
)


def _rows(kind: str, header: str, body: list[str], size: int) -> tuple[list[str], list[str]]:
    got = _by_chunks(kind, header, body, size)
    as_entry = consent_entry if kind == "consent" else contract_entry
    expected = [
        item if isinstance(item, tuple) else as_entry(item)  # type: ignore[arg-type]
        for item in _by_records(kind, header, body)
    ]
    return sorted(map(_key_of, got)), sorted(map(_key_of, expected))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(consent_numbers, principals, instants, instants, texts), min_size=1, max_size=8
    ),
    st.sampled_from([",", ";"]),
    st.integers(1, 4),
)
def test_consent_chunks_hold_what_records_give(
    rows: list[tuple[str, str, str, str, str]], sep: str, size: int
) -> None:
    header = sep.join(["number", "principal", "given_at", "expires_at", "proof_ref"])
    body = [sep.join(row) + "\n" for row in rows]
    got, expected = _rows("consent", header, body, size)
    assert got == expected


# Contract rows as files spell them: sectors in any case, unknown ones, empty cells.
contract_rows = st.lists(
    st.tuples(
        consent_numbers,
        principals,
        texts,
        st.sampled_from(["general", "cpf", "energy_renovation", "CPF", "gas", ""]),
        instants,
        instants,
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(contract_rows, st.integers(1, 4))
def test_contract_chunks_hold_what_records_give(
    rows: list[tuple[str, str, str, str, str, str]], size: int
) -> None:
    header = "number,principal,contract_id,sector,start,end"
    body = [",".join(row) + "\r\n" for row in rows]
    got, expected = _rows("contract", header, body, size)
    assert got == expected


# --- consents and contracts packed as they are read (import_files.Sink) ------------------------

PRINCIPAL_IDS = {"ACME": 0, "acme.fr": 7}


def _writes_and_rejects(
    kind: str, header_line: str, body: list[str], size: int, sink: bool
) -> tuple[list[Any], list[tuple[int, str]], int]:
    """What an import of `body` writes (the Gathered's commands), its bad lines and its
    row count: through a Sink, or as entries then gathered (the path programs take)."""
    header = read_header(kind, header_line)
    gathered = Gathered(kind)
    named: list[str] = []
    rejected: list[tuple[int, str]] = []
    rows = 0
    for chunk in chunks(header, iter(body), PARIS, size, gathered if sink else None):
        rejected += [(n, r.message) for n, r in chunk.rejected]
        rows += len(chunk)
        if chunk.needs:
            assert not gathered.knows(chunk.needs) and chunk.needs not in named
            named.append(chunk.needs)
            gathered.name(chunk.needs, PRINCIPAL_IDS.get(chunk.needs, 99))
        if chunk.rows:
            ids = {entry[1]: PRINCIPAL_IDS.get(entry[1], 99) for entry in chunk.rows}
            if kind == "consent":
                gathered.add_consents(chunk.rows, ids)
            else:
                gathered.add_contracts(chunk.rows, ids)
    # The buckets a build writes by plain HSETs (the others: long values, too many).
    return [*gathered.writes(), gathered.plain(MAX_ENTRIES)], rejected, rows


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(consent_numbers, principals, instants, instants, texts), min_size=1, max_size=8
    ),
    st.sampled_from([",", ";"]),
    st.integers(1, 4),
)
def test_consents_packed_as_read_are_the_entries_gathered(
    rows: list[tuple[str, str, str, str, str]], sep: str, size: int
) -> None:
    # Byte for byte, in the same order (the later row of a pair must stay later), with
    # the same bad lines at the same line numbers.
    header = sep.join(["number", "principal", "given_at", "expires_at", "proof_ref"])
    body = [sep.join(row) + "\n" for row in rows]
    expected = _writes_and_rejects("consent", header, body, size, sink=False)
    assert _writes_and_rejects("consent", header, body, size, sink=True) == expected


@settings(max_examples=400, deadline=None)
@given(contract_rows, st.integers(1, 4))
def test_contracts_packed_as_read_are_the_entries_gathered(
    rows: list[tuple[str, str, str, str, str, str]], size: int
) -> None:
    header = "number,principal,contract_id,sector,start,end"
    body = [",".join(row) + "\r\n" for row in rows]
    expected = _writes_and_rejects("contract", header, body, size, sink=False)
    assert _writes_and_rejects("contract", header, body, size, sink=True) == expected


def test_a_line_cut_for_length_inside_a_block_is_rejected_at_its_line() -> None:
    # A line too long to be valid comes cut, without its line break (import_reading.decoded):
    # the block it is in goes the general way, and the lines after it still load.
    plain = "0612345678,ACME,2026-09-01T12:30:00+02:00,,web-1\n"
    body = [plain, "x" * 20_000, plain.replace("678", "679"), plain.replace("678", "670")]
    writes, rejected, rows = _writes_and_rejects(
        "consent", "number,principal,given_at,expires_at,proof_ref", body, 10, sink=True
    )
    assert [n for n, _ in rejected] == [3] and rows == 3
    assert sum(count for count, _ in writes[:-1]) == 2 + 2 * 3  # one bucket, three entries


@pytest.mark.parametrize(
    ("kind", "header", "line"),
    [
        (
            "consent",
            "number,principal,given_at,expires_at,proof_ref",
            "061234{},ACME,2026-09-01T12:30:00+02:00,,{}\n",
        ),
        (
            "contract",
            "number,principal,contract_id,sector,start,end",
            "061234{},ACME,{},cpf,2025-01-01,\n",
        ),
    ],
)
def test_a_plain_line_too_long_for_a_listpack_keeps_its_bucket_from_plain_hsets(
    kind: str, header: str, line: str
) -> None:
    # The first line names the principal (the general path); the next ones are plain.
    body = [line.format("5670", "x"), line.format("5671", "y" * 60), line.format("5680", "z")]
    body.append(line.format("6780", "w"))  # another bucket
    for sink in (False, True):
        writes, rejected, rows = _writes_and_rejects(kind, header, body, 10, sink)
        assert not rejected and rows == 4
        assert writes[-1] == [1]  # not the bucket of 0612345000-999: a value over 64 bytes


def _read_whole(data: bytes, kind: str, by_blocks: bool) -> tuple[list[Any], list[Any], int]:
    """What an import of the file `data` gathers (as _writes_and_rejects), its lines read
    as the import reads them: a block of bytes at a time, or line by line."""
    handle = io.BytesIO(data)
    header = read_header(kind, next(import_reading.decoded(handle)))
    gathered = Gathered(kind)
    if by_blocks:
        found = blocks(header, import_reading.blocks(handle), PARIS, gathered)
    else:
        found = chunks(header, import_reading.decoded(handle), PARIS, 3, gathered)
    rejected: list[Any] = []
    rows = 0
    for chunk in found:
        rejected += [(n, r) for n, r in chunk.rejected]
        rows += len(chunk)
        if chunk.needs:
            gathered.name(chunk.needs, PRINCIPAL_IDS.get(chunk.needs, 99))
    return [*gathered.writes(), gathered.plain(MAX_ENTRIES)], rejected, rows


long_lines = st.sampled_from(
    [
        "0612345678,ACME,2026-09-01,," + "x" * 300,
        "0612345678,ACME,2026-09-01,," + "x" * 10_000,  # too long
        "x" * 17_000,  # too long to be read whole: cut
        "é" * 9_001,  # cut inside a character
        "0612345679,ACME,2026-09-01,,web-1\r",  # CRLF
        "",
        " ",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(consent_numbers, principals, instants, instants, texts).map(",".join),
            long_lines,
        ),
        max_size=12,
    ),
    st.booleans(),
    st.integers(8, 5000),
)
def test_consent_files_read_a_block_at_a_time_give_what_lines_give(
    lines: list[str], last_break: bool, block: int
) -> None:
    # Small blocks: lines cut by the block's end, lines longer than a block and than
    # a line is read whole, a last line without its line break, not UTF-8 anywhere.
    header = "number,principal,given_at,expires_at,proof_ref\n"
    data = (header + "\n".join(lines) + ("\n" if last_break else "")).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(import_reading, "BLOCK_BYTES", block)
        outcomes = []
        for by_blocks in (True, False):
            try:
                outcomes.append(_read_whole(data, "consent", by_blocks))
            except BadImportFile as exc:
                outcomes.append(str(exc))  # type: ignore[arg-type]
        assert outcomes[0] == outcomes[1]
        broken = data.replace(b"ACME", b"AC\xffME", 1)
        if broken != data:
            for by_blocks in (True, False):
                with pytest.raises(BadImportFile, match="not UTF-8"):
                    _read_whole(broken, "consent", by_blocks)
