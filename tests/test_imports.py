"""`dialguard.import_files.parse`: pure, no Redis. The formats are documented in docs/imports.md."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialguard.import_files import (
    MAX_REPORTED,
    BadImportFile,
    ConsentRow,
    ContractRow,
    DncRow,
    OptoutRow,
    Parsed,
    parse,
)
from dialguard.model import Sector
from dialguard.numbers import normalise

PARIS = ZoneInfo("Europe/Paris")
REUNION = ZoneInfo("Indian/Reunion")

CONSENT_HEADER = "number,principal,given_at,expires_at,proof_ref"
CONTRACT_HEADER = "number,principal,contract_id,sector,start,end"
BLOCTEL_HEADER = "telephone;identifiant;statut"

T = TypeVar("T")


def rows_of(parsed: Parsed[object], kind: type[T]) -> list[T]:
    assert parsed.error_count == 0, parsed.errors
    assert all(isinstance(row, kind) for row in parsed.rows), parsed.rows
    return [row for row in parsed.rows if isinstance(row, kind)]


def _pairs(rows: list[object]) -> list[tuple[str, str]]:
    """(E.164, reason) of DNC rows; a row's key is the E.164 digits without the '+'."""
    out: list[tuple[str, str]] = []
    for row in rows:
        assert isinstance(row, DncRow), row
        assert row.key.isdigit(), row
        assert isinstance(row.reason, str)
        out.append(("+" + row.key, row.reason))
    return out


def dnc_rows(parsed: Parsed[object]) -> list[tuple[str, str]]:
    """(E.164, reason) for each DNC row of a file without bad lines."""
    assert parsed.error_count == 0, parsed.errors
    return _pairs(parsed.rows)


# --- the container: delimiters, BOM, line ends, blank lines, header ---------------------


@pytest.mark.parametrize("sep", [",", ";"])
def test_comma_and_semicolon_delimiters(sep: str) -> None:
    lines = [
        f"number{sep}reason",
        f"06 12 34 56 78{sep}asked on the phone",
        f"+33 6 12 34 56 79{sep}",
        f'"0033 6 12 34 56 70"{sep}"Dupont{sep} Jean asked"',
    ]
    assert dnc_rows(parse("dnc", lines, PARIS)) == [
        ("+33612345678", "asked on the phone"),
        ("+33612345679", ""),  # no reason given: "" (the store reports "imported")
        ("+33612345670", f"Dupont{sep} Jean asked"),  # quoted: the delimiter is data
    ]


def test_bom_crlf_blank_lines_and_header_case() -> None:
    lines = [
        "\ufeffNumber ; REASON\r\n",
        "06.12.34.56.78;moved abroad\r\n",
        "   \r\n",
        " \t \n",
        "0612345679 ; \r\n",
    ]
    parsed = parse("dnc", lines, PARIS)
    assert dnc_rows(parsed) == [("+33612345678", "moved abroad"), ("+33612345679", "")]
    assert parsed.lines == 4  # data lines seen, blank ones included


@pytest.mark.parametrize("blank", ["", "\n", "\r\n"])
def test_empty_lines_are_skipped(blank: str) -> None:
    lines = ["number,reason\r\n", "0612345678,a\r\n", blank, "0612345679,b\r\n", blank]
    assert dnc_rows(parse("dnc", lines, PARIS)) == [("+33612345678", "a"), ("+33612345679", "b")]


def test_dnc_reason_column_is_optional() -> None:
    parsed = parse("dnc", ["NUMBER", "0612345678", "0262 12 34 56", "+262 692 12 34 56"], PARIS)
    assert dnc_rows(parsed) == [
        ("+33612345678", ""),
        ("+262262123456", ""),  # Réunion: one key whatever the spelling
        ("+262692123456", ""),
    ]


def test_header_only_file_has_no_rows() -> None:
    parsed = parse("consent", [CONSENT_HEADER + "\r\n"], PARIS)
    assert (parsed.rows, parsed.errors, parsed.error_count) == ([], [], 0)


@pytest.mark.parametrize(
    ("kind", "header"),
    [
        ("dnc", "phone,reason"),
        ("dnc", "reason,number"),  # the order is fixed
        ("dnc", "number,reason,extra"),
        ("consent", "number,principal,given_at,proof_ref"),  # expires_at is a required column
        ("contract", "number,principal,contract_id,sector,start"),
        ("bloctel", "telephone;statut"),
        ("bloctel", CONSENT_HEADER),
        ("dnc", ""),
    ],
)
def test_wrong_header_is_refused_as_line_1(kind: str, header: str) -> None:
    with pytest.raises(BadImportFile, match=r"^line 1: header .* is not ") as info:
        parse(kind, [header, "0612345678"], PARIS)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "header",
    [
        "x" * 200_000,  # past the csv module's field limit
        "number," + "x" * 5000,
        "x" * 4097 + "\n",
        "number\rx,reason\n",  # the csv module refuses a CR inside a line
    ],
)
def test_an_oversized_or_broken_header_is_refused_quoting_80_characters(header: str) -> None:
    with pytest.raises(BadImportFile, match=r"^line 1: header '.* is not 'number,reason'") as info:
        parse("dnc", [header, "0612345678"], PARIS)
    message = str(info.value)
    assert "\n" not in message and message.count("x") <= 80 and len(message) < 200, message


def test_a_header_of_4096_characters_is_only_a_wrong_header() -> None:
    with pytest.raises(BadImportFile, match=r"^line 1: header 'x{80}'\.\.\. is not ") as info:
        parse("dnc", ["x" * 4096 + "\r\n"], PARIS)
    assert "over 4096" not in str(info.value)


def test_empty_file_and_unknown_kind_are_refused() -> None:
    with pytest.raises(BadImportFile, match="empty"):
        parse("dnc", [], PARIS)
    with pytest.raises(BadImportFile, match="unknown import kind 'robinson'"):
        parse("robinson", ["number"], PARIS)


# --- consent ----------------------------------------------------------------------------


def test_consent_dates_times_and_zones() -> None:
    lines = [
        CONSENT_HEADER,
        "06 12 34 56 78,ACME,2026-09-01,,webform-1",  # a date: midnight in the given zone
        "0612345679,ACME,2026-09-01T14:30:00,2027-03-01,call-2",  # no offset: the zone too
        "0612345670,acme.fr,2026-09-01T14:30:00+02:00,2027-03-01T12:00:00Z,call-3",
        "0262123456,ACME,2026-09-01 09:00,,paper-4",
    ]
    rows = rows_of(parse("consent", lines, PARIS), ConsentRow)
    assert [(r.number.e164, r.principal, r.proof_ref) for r in rows] == [
        ("+33612345678", "ACME", "webform-1"),
        ("+33612345679", "ACME", "call-2"),
        ("+33612345670", "acme.fr", "call-3"),
        ("+262262123456", "ACME", "paper-4"),
    ]
    assert rows[0].given_at == datetime(2026, 9, 1, tzinfo=PARIS)
    assert rows[0].given_at == datetime(2026, 8, 31, 22, tzinfo=UTC)
    assert rows[0].expires_at is None
    assert rows[1].given_at == datetime(2026, 9, 1, 12, 30, tzinfo=UTC)
    assert rows[1].expires_at == datetime(2027, 2, 28, 23, tzinfo=UTC)  # midnight, Paris winter
    assert rows[2].given_at == datetime(2026, 9, 1, 12, 30, tzinfo=UTC)
    assert rows[2].expires_at == datetime(2027, 3, 1, 12, tzinfo=UTC)
    # The zone is the one passed in (the CLI passes the policy's default_timezone), not
    # the callee's: an overseas consent without an offset is read in Paris time.
    assert rows[3].given_at == datetime(2026, 9, 1, 7, tzinfo=UTC)


def test_the_zone_argument_is_used_for_dates_without_time() -> None:
    row = rows_of(
        parse("consent", [CONSENT_HEADER, "0612345678,A,2026-09-01,,p"], REUNION), ConsentRow
    )
    assert row[0].given_at == datetime(2026, 8, 31, 20, tzinfo=UTC)


# --- contract ---------------------------------------------------------------------------


def test_contract_with_and_without_end() -> None:
    lines = [
        CONTRACT_HEADER,
        "04 65 71 23 45,ACME,ENR-1,energy_renovation,2026-03-01,",
        "0465712346,ACME,HOME-2,home_adaptation,2025-01-01,2025-12-31",
        "0465712347,ACME,SAME-DAY,general,2026-01-05,2026-01-05",
    ]
    rows = rows_of(parse("contract", lines, PARIS), ContractRow)
    first, second, third = (row.contract for row in rows)
    assert rows[0].number.e164 == "+33465712345"
    assert (first.contract_id, first.sector, first.start, first.end) == (
        "ENR-1",
        Sector.ENERGY_RENOVATION,
        date(2026, 3, 1),
        None,  # ongoing
    )
    assert (second.sector, second.end) == (Sector.HOME_ADAPTATION, date(2025, 12, 31))
    assert third.start == third.end


# --- bloctel ----------------------------------------------------------------------------


def test_bloctel_ok_is_clear_every_other_status_is_listed() -> None:
    lines = [
        "Telephone;Identifiant;Statut",
        "0612345678;REQ-1;OK",
        "0612345679;REQ-2;ok",
        "0612345670;REQ-3;INSCRIT",
        "0612345671;REQ-4;KO",
        "0692123456;;Listed",  # identifiant may be empty
    ]
    rows = rows_of(parse("bloctel", lines, PARIS), OptoutRow)
    assert [(r.key, r.listed, r.ref) for r in rows] == [
        ("33612345678", False, "REQ-1"),
        ("33612345679", False, "REQ-2"),
        ("33612345670", True, "REQ-3"),
        ("33612345671", True, "REQ-4"),
        ("262692123456", True, ""),
    ]


# --- bad lines --------------------------------------------------------------------------

GOOD = {
    "dnc": "0611111111,ok",
    "consent": "0611111111,ACME,2026-09-01,,proof",
    "contract": "0611111111,ACME,C-1,general,2026-01-01,",
    "bloctel": "0611111111;REQ;OK",
}
HEADER = {
    "dnc": "number,reason",
    "consent": CONSENT_HEADER,
    "contract": CONTRACT_HEADER,
    "bloctel": BLOCTEL_HEADER,
}

BAD_LINES = [
    ("dnc", "0612345678,a,b", "3 fields, expected 2"),
    ("dnc", "0612345678", "1 fields, expected 2"),
    ("dnc", "abc,x", "'abc' contains characters other than digits"),
    ("dnc", "+33,x", "+33 must be followed by 9 digits"),
    ("dnc", "0612,x", "'0612' is not a French national"),
    ("dnc", "06123456789,x", "'06123456789' is not a French national"),
    ("dnc", "1" * 50 + ",x", "longer than 40 characters"),
    ("dnc", ",x", "empty number"),
    ("dnc", "112,x", "'112' is an emergency or short number"),
    ("dnc", "15,x", "'15' is an emergency or short number"),
    ("dnc", "116000,x", "'116000' is an emergency or short number"),
    ("dnc", "3949,x", "'3949' is an emergency or short number"),
    ("dnc", "0612345678,a|b", "reason must be at most 200 characters"),
    ("dnc", "0612345678," + "x" * 201, "reason must be at most 200 characters"),
    ("consent", "0612345678,ACME,2026-13-01,,p", "given_at '2026-13-01' is not a date"),
    ("consent", "0612345678,ACME,yesterday,,p", "given_at 'yesterday' is not a date"),
    ("consent", "0612345678,ACME,2026-09-01,2026-02-30,p", "expires_at '2026-02-30' is not"),
    ("consent", "0612345678,ACME,2026-09-01,2026-08-01,p", "expires_at must come after given_at"),
    ("consent", "0612345678,ACME,2026-09-01,2026-09-01,p", "expires_at must come after given_at"),
    ("consent", "0612345678,ACME,2026-09-01,,", "proof_ref is required"),
    ("consent", "0612345678,ACME,2026-09-01,,a|b", "proof_ref must be at most 200 characters"),
    ("consent", "0612345678,AC ME,2026-09-01,,p", "principal 'AC ME' must be 1-64"),
    ("consent", "0612345678,,2026-09-01,,p", "principal '' must be 1-64"),
    ("consent", "0612345678,ACME,,,p", "given_at '' is not a date"),
    ("consent", "17,ACME,2026-09-01,,p", "'17' is an emergency or short number"),
    ("consent", "0612345678,ACME,2026-09-01,p", "4 fields, expected 5"),
    ("contract", "0612345678,ACME,C1,enrgy,2026-01-01,", "sector 'enrgy' is not one of general"),
    ("contract", "0612345678,ACME,,general,2026-01-01,", "contract_id is required"),
    ("contract", "0612345678,ACME,C1,general,01/01/2026,", "start '01/01/2026' is not a date"),
    ("contract", "0612345678,ACME,C1,general,2026-01-01,soon", "end 'soon' is not a date"),
    ("contract", "0612345678,ACME,C1,general,2026-01-01,2025-12-31", "end must not come before"),
    ("contract", "0612345678,A/B,C1,general,2026-01-01,", "principal 'A/B' must be 1-64"),
    ("contract", "0612345678,ACME,C|1,general,2026-01-01,", "contract_id must be at most 200"),
    ("bloctel", "0612345678;REQ;", "Statut is empty"),
    ("bloctel", "06 12;REQ;OK", "'06 12' is not a French national"),
    ("bloctel", "0612345678;R|1;OK", "Identifiant must be at most 200 characters"),
    ("bloctel", "0612345678;OK", "2 fields, expected 3"),
]


@pytest.mark.parametrize(("kind", "line", "message"), BAD_LINES)
def test_each_kind_of_bad_line_is_reported_with_its_number(
    kind: str, line: str, message: str
) -> None:
    # line 1 header, line 2 good, line 3 bad, line 4 good: only line 3 is reported.
    parsed = parse(kind, [HEADER[kind], GOOD[kind], line, GOOD[kind]], PARIS)
    assert parsed.error_count == 1
    assert len(parsed.errors) == 1
    assert parsed.errors[0].startswith("line 3: "), parsed.errors
    assert message in parsed.errors[0]
    assert "\n" not in parsed.errors[0]
    assert len(parsed.rows) == 2


def test_line_numbers_count_blank_lines_like_an_editor() -> None:
    lines = ["number", " ", "0612345678", " ", "\t", "abc", "0612"]
    parsed = parse("dnc", lines, PARIS)
    assert parsed.error_count == 2
    assert [e.split(":")[0] for e in parsed.errors] == ["line 6", "line 7"]


def test_every_bad_line_is_counted_but_only_the_first_ones_are_listed() -> None:
    bad = MAX_REPORTED + 7
    lines = ["number,reason", "0612345678,ok"] + [f"bad{i},x" for i in range(bad)] + ["0612,x"]
    parsed = parse("dnc", lines, PARIS)
    assert parsed.error_count == bad + 1  # exact, beyond the cap
    assert len(parsed.errors) == MAX_REPORTED
    assert [e.split(":")[0] for e in parsed.errors] == [
        f"line {n}" for n in range(3, 3 + MAX_REPORTED)
    ]
    assert len(parsed.rows) == 1


def test_emergency_numbers_are_refused_in_a_dnc_file() -> None:
    lines = ["number", "112", "15", "17", "18", "114", "115", "119", "116 000", "0612345678"]
    parsed = parse("dnc", lines, PARIS)
    assert parsed.error_count == 8
    assert all("emergency or short number" in e for e in parsed.errors)
    assert _pairs(parsed.rows) == [("+33612345678", "")]


def test_an_oversized_field_is_a_bad_line_not_a_crash() -> None:
    parsed = parse("dnc", ["number,reason", "0612345678," + "x" * 140_000, "0612345679,ok"], PARIS)
    assert parsed.error_count == 1
    assert parsed.errors[0].startswith("line 2: ")


@pytest.mark.parametrize("value", ["0001-01-01", "9999-12-31T23:59:59-05:00"])
def test_instants_the_store_cannot_hold_are_bad_lines(value: str) -> None:
    parsed = parse("consent", [CONSENT_HEADER, f"0612345678,ACME,{value},,p"], PARIS)
    assert parsed.error_count == 1
    assert parsed.errors[0].startswith("line 2: given_at")


# --- property: every spelling of one line meets on one E.164 key -------------------------


def _spell(nsn: str, style: int) -> str:
    national = "0" + nsn
    pairs = [national[i : i + 2] for i in range(0, 10, 2)]
    grouped = " ".join([nsn[0]] + [nsn[i : i + 2] for i in range(1, 9, 2)])
    return [
        national,
        " ".join(pairs),
        ".".join(pairs),
        "-".join(pairs),
        "+33" + nsn,
        "+33 " + grouped,
        "+33 (0)" + grouped,
        "+33 0" + nsn,
        "0033" + nsn,
        "0033 " + grouped,
        f"  {' '.join(pairs)}  ",
    ][style]


SPELLINGS = 11
NSN = st.from_regex(r"[1-9][0-9]{8}", fullmatch=True) | st.sampled_from(
    # Overseas blocks, where +33 is not the right country code.
    ["262123456", "692123456", "269601234", "639123456", "590123456", "694123456",
     "696123456", "709312345", "939912345", "947512345"]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(st.tuples(NSN, st.integers(0, SPELLINGS - 1)), min_size=1, max_size=25),
    sep=st.sampled_from([",", ";"]),
    with_reason=st.booleans(),
)
def test_any_spelling_of_french_numbers_round_trips_to_one_e164_set(
    entries: list[tuple[str, int]], sep: str, with_reason: bool
) -> None:
    header = f"number{sep}reason" if with_reason else "number"
    lines = [header] + [
        _spell(nsn, style) + (f"{sep}r" if with_reason else "") for nsn, style in entries
    ]
    got = {e164 for e164, _ in dnc_rows(parse("dnc", lines, PARIS))}
    expected = {normalise("0" + nsn).e164 for nsn, _ in entries}
    assert got == expected
    for nsn, _ in entries:
        e164 = normalise("0" + nsn).e164
        assert e164.endswith(nsn)
        assert e164[: -len(nsn)] in {"+33", "+262", "+590", "+594", "+596"}
        if nsn[:3] not in {"262", "263", "269", "590", "594", "596", "639"} and nsn[:2] not in {
            "69",
            "70",
            "93",
            "94",
        }:
            assert e164 == "+33" + nsn
