"""Numbers as VICIdial stores them (dialguard.vicidial.forms): both forms read whatever the
setting, the configured one written, nothing that is not a French number taken for one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialguard.numbers import normalise
from dialguard.vicidial.forms import (
    NumberForm,
    from_vicidial,
    to_vicidial,
    vicidial_forms,
    vicidial_key,
)

# A national significant number: nine digits, not starting with 0.
NSN = st.from_regex(r"\A[1-9][0-9]{8}\Z", fullmatch=True)


@given(NSN)
def test_both_forms_are_one_line_and_write_back_as_they_were(nsn: str) -> None:
    national = from_vicidial("0" + nsn)
    short = from_vicidial(nsn)
    assert national is not None and short is not None
    assert national.e164 == short.e164 == normalise("0" + nsn).e164
    assert to_vicidial(national.key, NumberForm.NATIONAL) == "0" + nsn
    assert to_vicidial(national.key, NumberForm.NSN) == nsn
    assert vicidial_forms(national.key) == ("0" + nsn, nsn)


@given(st.text(max_size=30))
def test_any_entry_is_a_french_number_or_none_never_an_error(raw: str) -> None:
    number = from_vicidial(raw)
    if number is not None:  # then it can be written back, and reads as itself
        written = to_vicidial(number.key, NumberForm.NATIONAL)
        assert written is not None
        again = from_vicidial(written)
        assert again is not None and again.e164 == number.e164


@given(st.one_of(st.text(max_size=14), st.from_regex(r"\A0?[0-9]{8,10}\Z", fullmatch=True)))
def test_the_fast_key_is_the_slow_one(raw: str) -> None:
    number = from_vicidial(raw)
    assert vicidial_key(raw) == (number.key if number is not None else None)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("0612345678", "+33612345678"),
        ("612345678", "+33612345678"),
        ("06 12 34 56 78", "+33612345678"),
        ("06.12.34.56.78", "+33612345678"),
        ("33612345678", "+33612345678"),  # typed with the country code
        ("+33612345678", "+33612345678"),
        ("0692123456", "+262692123456"),  # Réunion: its own country code, the same plan
        ("692123456", "+262692123456"),
        ("0596123456", "+596596123456"),
        ("0800123456", "+33800123456"),
        ("201XXXXXXX", None),  # an AREACODE entry: a whole US area code
        ("201xxxxxxx", None),
        ("112", None),  # emergency numbers are never listed
        ("3949", None),
        ("12", None),
        ("0012345678", None),
        ("4412345678", None),  # a foreign number without its code: unknowable
        ("+447911123456", None),  # foreign: VICIdial could not tell it from a French line
        ("06123456789", None),
        ("", None),
        ("abc", None),
        ("061234567\n", None),
    ],
)
def test_entries_read_as(raw: str, e164: str | None) -> None:
    number = from_vicidial(raw)
    assert (number.e164 if number is not None else None) == e164


def test_only_french_plan_numbers_are_written() -> None:
    assert to_vicidial("447911123456", NumberForm.NATIONAL) is None
    assert to_vicidial("508551234", NumberForm.NSN) is None  # Saint-Pierre: its own plan
    assert vicidial_forms("447911123456") == ()
    assert to_vicidial("262692123456", NumberForm.NATIONAL) == "0692123456"
