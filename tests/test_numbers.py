from __future__ import annotations

import contextlib

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialguard.numbers import InvalidNumber, Kind, normalise

SPELLINGS = [
    # raw, E.164, kind, territory, time zone
    ("0612345678", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("06 12 34 56 78", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("06.12.34.56.78", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("06-12-34-56-78", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("(06) 12 34 56 78", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("+33612345678", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("+33 6 12 34 56 78", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("+33 (0)6 12 34 56 78", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("+330612345678", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("0033612345678", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("0033 6 12 34 56 78", "+33612345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("0712345678", "+33712345678", Kind.MOBILE, "FR", "Europe/Paris"),
    ("0147000000", "+33147000000", Kind.GEOGRAPHIC, "FR", "Europe/Paris"),
    ("0388123456", "+33388123456", Kind.GEOGRAPHIC, "FR", "Europe/Paris"),
    ("0812345678", "+33812345678", Kind.SPECIAL_RATE, "FR", "Europe/Paris"),
    ("0970123456", "+33970123456", Kind.NON_GEOGRAPHIC, "FR", "Europe/Paris"),
    # The overseas trap: same national plan, their own country codes and time zones.
    ("0262123456", "+262262123456", Kind.GEOGRAPHIC, "RE", "Indian/Reunion"),
    ("+262262123456", "+262262123456", Kind.GEOGRAPHIC, "RE", "Indian/Reunion"),
    ("+33262123456", "+262262123456", Kind.GEOGRAPHIC, "RE", "Indian/Reunion"),
    ("00262262123456", "+262262123456", Kind.GEOGRAPHIC, "RE", "Indian/Reunion"),
    ("0692123456", "+262692123456", Kind.MOBILE, "RE", "Indian/Reunion"),
    ("0693123456", "+262693123456", Kind.MOBILE, "RE", "Indian/Reunion"),
    ("0269612345", "+262269612345", Kind.GEOGRAPHIC, "YT", "Indian/Mayotte"),
    ("0639012345", "+262639012345", Kind.MOBILE, "YT", "Indian/Mayotte"),
    ("0590123456", "+590590123456", Kind.GEOGRAPHIC, "GP", "America/Guadeloupe"),
    ("0690123456", "+590690123456", Kind.MOBILE, "GP", "America/Guadeloupe"),
    ("0594123456", "+594594123456", Kind.GEOGRAPHIC, "GF", "America/Cayenne"),
    ("0694123456", "+594694123456", Kind.MOBILE, "GF", "America/Cayenne"),
    ("0596123456", "+596596123456", Kind.GEOGRAPHIC, "MQ", "America/Martinique"),
    ("0696123456", "+596696123456", Kind.MOBILE, "MQ", "America/Martinique"),
    ("+508 41 12 34", "+508411234", Kind.GEOGRAPHIC, "PM", "America/Miquelon"),
    ("+32 470 12 34 56", "+32470123456", Kind.FOREIGN, "BE", "Europe/Brussels"),
    ("0032470123456", "+32470123456", Kind.FOREIGN, "BE", "Europe/Brussels"),
]


@pytest.mark.parametrize(("raw", "e164", "kind", "territory", "zone"), SPELLINGS)
def test_spellings(raw: str, e164: str, kind: Kind, territory: str, zone: str) -> None:
    number = normalise(raw)
    assert (number.e164, number.kind, number.territory) == (e164, kind, territory)
    assert number.timezones == (zone,)
    assert number.key == e164.lstrip("+")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("15", Kind.EMERGENCY),
        ("17", Kind.EMERGENCY),
        ("18", Kind.EMERGENCY),
        ("112", Kind.EMERGENCY),
        ("114", Kind.EMERGENCY),
        ("115", Kind.EMERGENCY),
        ("119", Kind.EMERGENCY),
        ("191", Kind.EMERGENCY),
        ("196", Kind.EMERGENCY),
        ("197", Kind.EMERGENCY),
        ("116000", Kind.EMERGENCY),
        ("116 117", Kind.EMERGENCY),
        ("3949", Kind.SHORT),
        ("1044", Kind.SHORT),
    ],
)
def test_short_numbers_are_never_blocked(raw: str, kind: Kind) -> None:
    number = normalise(raw)
    assert number.kind is kind
    assert number.never_blocked
    # ... whether or not the PBX put its outside-line digit in front.
    assert normalise("0" + raw.replace(" ", ""), outside_prefix="0").kind is kind
    assert normalise(raw, outside_prefix="9").kind is kind


def test_outside_line_prefix_is_configuration_not_a_guess() -> None:
    assert normalise("00612345678", outside_prefix="0").e164 == "+33612345678"
    assert normalise("90612345678", outside_prefix="9").e164 == "+33612345678"
    assert normalise("9 0033 6 12 34 56 78", outside_prefix="9").e164 == "+33612345678"
    assert normalise("000262262123456", outside_prefix="0").e164 == "+262262123456"
    # Without the prefix configured, 00 starts an international number.
    with pytest.raises(InvalidNumber):
        assert normalise("00612345678").e164 != "+33612345678"
    # With it configured, a number that lacks it is refused, not guessed at.
    with pytest.raises(InvalidNumber, match="outside-line prefix"):
        normalise("0612345678", outside_prefix="9")
    # An international number written with "+" needs no outside line.
    assert normalise("+33612345678", outside_prefix="0").e164 == "+33612345678"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "06 12 34 56 7x",
        "+33",
        "+33 6 12",
        "0612",
        "06123456789",
        "0012",
        "+",
        "1" * 50,
        "06\n12345678",
        "0612345678;DROP",
        "+262 62 12 34",
        "++33612345678",
        "0",
        "0012345678",
        "+1 555",
    ],
)
def test_refusals_are_one_line(raw: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        normalise(raw)
    assert "\n" not in str(info.value)


@settings(max_examples=300)
@given(st.text(max_size=60), st.sampled_from(["", "0", "9", "00"]))
def test_normalise_only_ever_refuses_cleanly(raw: str, prefix: str) -> None:
    try:
        number = normalise(raw, prefix)
    except InvalidNumber:
        return
    assert number.e164.lstrip("+").isdigit()
    assert number.timezones or number.kind is Kind.FOREIGN


dial_chars = st.text(alphabet="0123456789 +.-()/", max_size=25)


@settings(max_examples=300)
@given(dial_chars, st.sampled_from(["", "0", "9"]))
def test_normalise_dial_strings(raw: str, prefix: str) -> None:
    with contextlib.suppress(InvalidNumber):
        normalise(raw, prefix)


nsns = st.from_regex(r"\A[1-9][0-9]{8}\Z", fullmatch=True)
separator = st.sampled_from(["", " ", ".", "-"])


def _spaced(digits: str, sep: str) -> str:
    return sep.join(digits[i : i + 2] for i in range(0, len(digits), 2))


@settings(max_examples=400)
@given(nsns, separator, st.sampled_from(["33", "262", "590", "594", "596"]))
def test_every_spelling_of_a_french_number_meets(nsn: str, sep: str, code: str) -> None:
    spellings = [
        "0" + nsn,
        _spaced("0" + nsn, sep),
        "+33" + nsn,
        f"+33 {_spaced(nsn, sep)}",
        "0033" + nsn,
        f"+{code}{nsn}",
        f"00{code}{nsn}",
        f"+{code} (0){nsn}",
    ]
    keys = {normalise(s).key for s in spellings}
    assert len(keys) == 1
    number = normalise("0" + nsn)
    assert number.e164.endswith(nsn)
    assert normalise(number.e164) == normalise(number.e164)  # stable on its own output
    assert normalise(number.e164).e164 == number.e164


@settings(max_examples=300)
@given(nsns)
def test_overseas_numbers_agree_with_libphonenumber(nsn: str) -> None:
    """Where libphonenumber places a number in exactly one French territory, so do we."""
    regions: set[str] = set()
    for code in (33, 262, 590, 594, 596):
        parsed = phonenumbers.PhoneNumber(country_code=code, national_number=int(nsn))
        if phonenumbers.is_valid_number(parsed):
            regions.add(str(phonenumbers.region_code_for_number(parsed)))
    overseas = regions - {"FR"}
    if len(overseas) != 1 or len(regions) != 1:
        return  # unassigned, or claimed by several territories in the metadata
    (region,) = overseas
    # Saint-Martin and Saint-Barthélemy share +590 with Guadeloupe.
    assert normalise("0" + nsn).territory == {"MF": "GP", "BL": "GP"}.get(region, region)
