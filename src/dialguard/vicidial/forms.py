"""Numbers as VICIdial stores them, and back. Pure: no I/O.

VICIdial keeps a number's digits without its country code (the lead's `phone_code` is a
column of its own, which the do-not-call tables do not have). French installations differ
in whether the national trunk 0 is kept: `0612345678` ("national") or `612345678`
("nsn", the national significant number). Data loaded over the years is often both, so
both are read whatever the setting; dialguard writes the form the installation uses.

Only numbers of the French national plan (metropolitan France and the overseas
departments, which share it) can be written: VICIdial's do-not-call tables have no
country code, so a foreign number written there would block whichever French line has
the same digits.
"""

from __future__ import annotations

import enum
import re

from dialguard.numbers import InvalidNumber, Number, fast_key, listable

__all__ = [
    "FRENCH_PLAN_CODES",
    "NumberForm",
    "from_vicidial",
    "to_vicidial",
    "vicidial_forms",
    "vicidial_key",
]


class NumberForm(enum.StrEnum):
    NATIONAL = "national"  # 0612345678
    NSN = "nsn"  # 612345678


# Country codes whose numbers VICIdial keeps as French national numbers (dialguard.numbers
# gives an overseas department's NSN its own code: +262 692..., national 0692...).
FRENCH_PLAN_CODES = ("33", "262", "590", "594", "596")
# VICIdial's AREACODE entries: a US area code and seven literal X, blocking the whole code.
_AREA_CODE = re.compile(r"^\d{3}X{7}$", re.IGNORECASE)
# Separators found in hand-typed entries; anything else makes an entry unreadable.
_SEPARATORS = re.compile(r"[ .\-/()]")


def from_vicidial(raw: str) -> Number | None:
    """The number a VICIdial entry stands for, read as a French number in either form
    (`0612345678`, `612345678`; also `33612345678` or `+33612345678` when someone typed the
    country code); None when the entry is no callable French number (an AREACODE entry,
    a short or foreign-looking one, garbage)."""
    text = _SEPARATORS.sub("", raw.strip())
    if not text or _AREA_CODE.match(text) or len(text) > 16:
        return None
    if text.startswith("+"):
        candidate = text
    elif not (text.isdigit() and text.isascii()):
        return None
    elif len(text) == 10 and text[0] == "0":
        candidate = text
    elif len(text) == 9 and text[0] != "0":
        candidate = "0" + text
    elif len(text) in (11, 12) and text.startswith(FRENCH_PLAN_CODES):
        candidate = "+" + text
    else:
        return None
    try:
        number = listable(candidate)
    except InvalidNumber:
        return None
    return number if _nsn(number.key) is not None else None


def vicidial_key(raw: str) -> str | None:
    """`from_vicidial(raw).key` (None likewise), a few times faster for the two plain
    forms: a list is read whole each time it changes (a property test holds the two
    together)."""
    if len(raw) == 10:
        key = fast_key(raw)
    elif len(raw) == 9 and raw[0] != "0":
        key = fast_key("0" + raw)
    else:
        key = None
    if key is not None:
        return key
    number = from_vicidial(raw)
    return number.key if number is not None else None


def to_vicidial(key: str, form: NumberForm) -> str | None:
    """The number of store key `key` (E.164 digits) spelled as VICIdial keeps it in `form`;
    None outside the French national plan (it cannot be written without a country code)."""
    nsn = _nsn(key)
    if nsn is None:
        return None
    return "0" + nsn if form is NumberForm.NATIONAL else nsn


def vicidial_forms(key: str) -> tuple[str, ...]:
    """Every spelling an entry in VICIdial may have for store key `key`: to find it
    whatever form was used when it was put there."""
    nsn = _nsn(key)
    return ("0" + nsn, nsn) if nsn is not None else ()


def _nsn(digits: str) -> str | None:
    for code in FRENCH_PLAN_CODES:
        if digits.startswith(code) and len(digits) == len(code) + 9:
            return digits[len(code) :]
    return None
