"""Turn what a dialplan hands over into one canonical number, or a clear refusal.

Pure: no I/O, no clock. The rules it encodes (ARCEP national numbering plan):

* Metropolitan France and the overseas departments share ONE national plan: ten digits,
  a leading ``0`` then a 9-digit national significant number (NSN). Each overseas
  department has its own country code, so ``0262 12 34 56`` is ``+262 262 12 34 56``,
  not ``+33 262 12 34 56`` (which libphonenumber calls invalid). A key mismatch between the
  two spellings would read as "not listed" and let a listed number through, so the country
  code is derived from the NSN alone, whatever code the input carried: every spelling of
  one line meets on one key.
* Emergency and short numbers are never prospecting and must never be blocked.
* An outside-line prefix (``0`` or ``9`` on many PBXs) is configuration, not a guess:
  with prefix ``0``, ``00612345678`` is the national ``0612345678``; without it, the same
  digits are an international number.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import cache

import phonenumbers
from phonenumbers import timezone as pn_timezone

__all__ = [
    "InvalidNumber",
    "Kind",
    "Number",
    "import_key",
    "normalise",
]


class InvalidNumber(ValueError):
    """The input is not a callable number; the message says why in one line."""


class Kind(enum.StrEnum):
    MOBILE = "mobile"
    GEOGRAPHIC = "geographic"
    SPECIAL_RATE = "special_rate"  # 08: service numbers of businesses
    NON_GEOGRAPHIC = "non_geographic"  # 09: VoIP lines, often a household's
    EMERGENCY = "emergency"
    SHORT = "short"  # other short service numbers (10xx, 3xxx)
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class Number:
    raw: str
    e164: str  # "+33612345678"; for short numbers the digits as dialled
    kind: Kind
    territory: str  # ISO 3166 code of the callee's territory ("FR", "RE", ...) or "" if unknown
    timezones: tuple[str, ...]  # IANA zones; several when the number does not tell which

    @property
    def key(self) -> str:
        """The store key: E.164 digits, the same for every spelling of one line."""
        return self.e164.lstrip("+")

    @property
    def never_blocked(self) -> bool:
        return self.kind in (Kind.EMERGENCY, Kind.SHORT)


# Longest input we look at. E.164 allows 15 digits; with separators and an outside-line
# prefix a real dial string stays far below this. Anything longer is not a number.
MAX_INPUT = 40

# Spaces include the no-break spaces that French typography and spreadsheets put between
# digit pairs. Line breaks and tabs are not separators: they mean a corrupted field.
_SEPARATORS = re.compile("[ \u00a0\u202f.\\-/()]")
_ALLOWED = re.compile("^\\+?[0-9 \u00a0\u202f.\\-/()]+$")
# "+33 (0)6 12 34 56 78": the "(0)" is the national trunk prefix written for readers.
_TRUNK_ZERO = re.compile(r"^(\+|00)(\d{1,3}) ?\(0\)")

# Emergency services (Code des postes et des communications électroniques, ARCEP decision
# 2007-0213): never blocked, whatever the campaign.
_EMERGENCY = frozenset({"15", "17", "18", "112", "114", "115", "119", "191", "196", "197"})
_EMERGENCY_PREFIX = "116"  # 116xxx harmonised European services of social value
_SHORT = re.compile(r"^(?:10\d\d|3\d\d\d)$")

# Country codes that share the French national plan (NSN of 9 digits).
_FRENCH_PLAN_CODES = ("33", "262", "590", "594", "596")
_SPM_CODE = "508"  # Saint-Pierre-et-Miquelon has its own 6-digit plan

# NSN prefix -> (country code, territory) for the overseas departments. Longest prefix
# wins; everything else in the plan is metropolitan (+33). Sources: ARCEP national
# numbering plan; libphonenumber metadata for the overseas mobile (0709x) and VoIP
# (09xx) blocks, keeping only the blocks it assigns to exactly one territory.
_OVERSEAS: dict[str, tuple[str, str]] = {
    # Réunion
    "262": ("262", "RE"),
    "263": ("262", "RE"),
    "692": ("262", "RE"),
    "693": ("262", "RE"),
    "7092": ("262", "RE"),
    **{f"9399{d}": ("262", "RE") for d in "0123"},
    **{f"9479{d}": ("262", "RE") for d in "0123456"},
    # Mayotte
    "269": ("262", "YT"),
    "639": ("262", "YT"),
    **{f"7093{d}": ("262", "YT") for d in "567"},
    **{f"9398{d}": ("262", "YT") for d in "01"},
    **{f"9478{d}": ("262", "YT") for d in "01"},
    # Guadeloupe, Saint-Martin, Saint-Barthélemy (one code; the number does not say which)
    "590": ("590", "GP"),
    "690": ("590", "GP"),
    "691": ("590", "GP"),
    "7090": ("590", "GP"),
    **{f"9475{d}": ("590", "GP") for d in "0123456"},
    # Guyane
    "594": ("594", "GF"),
    "694": ("594", "GF"),
    **{f"7093{d}": ("594", "GF") for d in "0123"},
    **{f"9476{d}": ("594", "GF") for d in "0123456"},
    # Martinique
    "596": ("596", "MQ"),
    "696": ("596", "MQ"),
    "697": ("596", "MQ"),
    "7091": ("596", "MQ"),
    **{f"9477{d}": ("596", "MQ") for d in "012345"},
}
_OVERSEAS_PREFIX_LENGTHS = sorted({len(p) for p in _OVERSEAS}, reverse=True)

TERRITORY_TIMEZONE: dict[str, str] = {
    "FR": "Europe/Paris",
    "RE": "Indian/Reunion",
    "YT": "Indian/Mayotte",
    "GP": "America/Guadeloupe",
    "GF": "America/Cayenne",
    "MQ": "America/Martinique",
    "PM": "America/Miquelon",
}

_KIND_BY_FIRST_DIGIT = {
    "1": Kind.GEOGRAPHIC,
    "2": Kind.GEOGRAPHIC,
    "3": Kind.GEOGRAPHIC,
    "4": Kind.GEOGRAPHIC,
    "5": Kind.GEOGRAPHIC,
    "6": Kind.MOBILE,
    "7": Kind.MOBILE,
    "8": Kind.SPECIAL_RATE,
    "9": Kind.NON_GEOGRAPHIC,
}


def normalise(raw: str, outside_prefix: str = "") -> Number:
    """Return the canonical number for a dial string, or raise InvalidNumber."""
    digits, international = _clean(raw)

    # Emergency first, before any prefix handling: "112" must pass whether or not the
    # PBX put its outside-line digit in front of it.
    short = _short_number(raw, digits) if not international else None
    if short is not None:
        return short
    if outside_prefix and not international:
        if not digits.startswith(outside_prefix):
            raise InvalidNumber(
                f"{raw!r} does not start with the campaign's outside-line prefix {outside_prefix!r}"
            )
        digits = digits[len(outside_prefix) :]
        short = _short_number(raw, digits)
        if short is not None:
            return short

    if international:
        return _international(raw, digits)
    if digits.startswith("00"):
        return _international(raw, digits[2:])
    if len(digits) == 10 and digits[0] == "0" and digits[1] != "0":
        return _french(raw, digits[1:])
    raise InvalidNumber(f"{raw!r} is not a French national, international or short number")


def _clean(raw: str) -> tuple[str, bool]:
    if raw.isdigit() and raw.isascii() and len(raw) <= MAX_INPUT:
        return raw, False  # as dialplans pass it: ${FILTER(0-9+,${EXTEN})}
    text = raw.strip()
    if not text:
        raise InvalidNumber("empty number")
    if len(text) > MAX_INPUT:
        raise InvalidNumber(f"number longer than {MAX_INPUT} characters")
    if not _ALLOWED.match(text):
        raise InvalidNumber(
            f"{raw!r} contains characters other than digits, a leading +, spaces, . - / ( )"
        )
    text = _TRUNK_ZERO.sub(r"\1\2", text)
    international = text.startswith("+")
    digits = _SEPARATORS.sub("", text.lstrip("+"))
    if not digits:
        raise InvalidNumber(f"{raw!r} has no digits")
    return digits, international


def _short_number(raw: str, digits: str) -> Number | None:
    if digits in _EMERGENCY or (len(digits) == 6 and digits.startswith(_EMERGENCY_PREFIX)):
        kind = Kind.EMERGENCY
    elif _SHORT.match(digits):
        kind = Kind.SHORT
    else:
        return None
    return Number(raw, digits, kind, "FR", (TERRITORY_TIMEZONE["FR"],))


def _international(raw: str, digits: str) -> Number:
    for code in _FRENCH_PLAN_CODES:
        if digits.startswith(code):
            nsn = digits[len(code) :]
            # "+33 06 12 34 56 78" is a frequent way of writing the national number after
            # the country code; an NSN never starts with 0, so the reading is unambiguous.
            if len(nsn) == 10 and nsn[0] == "0":
                nsn = nsn[1:]
            if len(nsn) == 9 and nsn[0] != "0":
                return _french(raw, nsn)
            raise InvalidNumber(f"{raw!r}: +{code} must be followed by 9 digits")
    if digits.startswith(_SPM_CODE):
        nsn = digits[len(_SPM_CODE) :]
        if len(nsn) != 6:
            raise InvalidNumber(f"{raw!r}: +508 must be followed by 6 digits")
        kind = Kind.MOBILE if nsn.startswith("55") else Kind.GEOGRAPHIC
        return Number(raw, "+508" + nsn, kind, "PM", (TERRITORY_TIMEZONE["PM"],))
    return _foreign(raw, digits)


def _french(raw: str, nsn: str) -> Number:
    code, territory = _territory(nsn)
    kind = _KIND_BY_FIRST_DIGIT[nsn[0]]
    return Number(raw, f"+{code}{nsn}", kind, territory, (TERRITORY_TIMEZONE[territory],))


# Unbounded, but there are at most 100,000 five-digit prefixes: a bounded cache thrashed
# on a list of mobile numbers (20,000 prefixes) and tripled the cost of an import.
@cache
def _territory_for_prefix(prefix: str) -> tuple[str, str]:
    for length in _OVERSEAS_PREFIX_LENGTHS:
        found = _OVERSEAS.get(prefix[:length])
        if found is not None:
            return found
    return ("33", "FR")


def _territory(nsn: str) -> tuple[str, str]:
    # Every overseas block is decided by at most five leading digits, so the cache is
    # keyed on those and stays small.
    return _territory_for_prefix(nsn[:5])


def _foreign(raw: str, digits: str) -> Number:
    if not 7 <= len(digits) <= 15:
        raise InvalidNumber(f"{raw!r} is not a valid international number")
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"{raw!r} is not a valid international number ({exc})") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(f"{raw!r} is not a valid international number")
    region = phonenumbers.region_code_for_number(parsed) or ""
    zones = tuple(z for z in pn_timezone.time_zones_for_number(parsed) if z != "Etc/Unknown")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return Number(raw, e164, Kind.FOREIGN, region, zones)


class NotListable(InvalidNumber):
    """An emergency or short number where a list entry was asked for (one line)."""


def listable(raw: str, outside_prefix: str = "") -> Number:
    """`normalise`, refusing emergency and short numbers: never blocked, so no list (do-not-
    call, consents, registry results, outcomes) ever holds one."""
    number = normalise(raw, outside_prefix)
    if number.never_blocked:
        raise NotListable(f"{raw!r} is an emergency or short number, which is never blocked")
    return number


def import_key(raw: str) -> str:
    """The store key of a number in an import file: ``normalise(raw).key``, refusing
    emergency and short numbers (never blocked, so never listed).

    Ten million lines must load in seconds and ``normalise`` costs ~2.6 µs, so the
    spellings exports use take `fast_key` (a property test holds the two together).
    """
    # Over MAX_INPUT characters once stripped, spaces included, normalise refuses it: so
    # must an import, or a file would list what `check` calls no number.
    if len(raw) <= MAX_INPUT:
        key = fast_key(raw.replace(" ", "") if " " in raw else raw)
        if key is not None:
            return key
    return listable(raw).key


# NSN's first five digits -> its country code (filled as met; at most 100,000 entries).
_CODE_OF_PREFIX: dict[str, str] = {}


def fast_key(text: str) -> str | None:
    """``normalise(text).key`` for ``0612345678``, ``+33612345678`` and ``0033612345678``
    in a few hundred nanoseconds; None for any other spelling (use ``normalise``)."""
    length = len(text)
    if length == 10:
        if text[0] != "0" or text[1] == "0" or not (text.isdigit() and text.isascii()):
            return None
        nsn = text[1:]
    elif length == 12:
        if text[:3] != "+33" or text[3] == "0" or not (text[1:].isdigit() and text.isascii()):
            return None
        nsn = text[3:]
    elif length == 13:
        if text[:4] != "0033" or text[4] == "0" or not (text.isdigit() and text.isascii()):
            return None
        nsn = text[4:]
    else:
        return None
    return key_of_nsn(nsn)


def key_of_nsn(nsn: str) -> str:
    """The store key of a French NSN (nine digits, the first not 0): its country code
    (France's, or an overseas territory's) and the NSN."""
    prefix = nsn[:5]
    code = _CODE_OF_PREFIX.get(prefix)
    if code is None:
        code = _CODE_OF_PREFIX[prefix] = _territory_for_prefix(prefix)[0]
    return code + nsn
