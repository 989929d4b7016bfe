"""Audit exports: the file (JSON Lines or CSV), its pseudonymised variant, and what its
manifest says (`dialguard audit export`, the console's exports).

A JSON Lines export holds the journal's lines as they are (their hashes check), unless
masked; CSV puts a `'` before any cell a spreadsheet would run as a formula (csv_cells).
Masking replaces the callee's number with a keyed pseudonym wherever a record spells it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from dialguard.csv_cells import cell
from dialguard.numbers import InvalidNumber, normalise

__all__ = [
    "CSV_FIELDS",
    "MASK_KEY_ENV",
    "MIN_KEY_BYTES",
    "Tally",
    "created_now",
    "masked",
    "pseudonym",
    "write_csv",
    "write_export",
]

MASK_KEY_ENV = "DIALGUARD_AUDIT_MASK_KEY"
MIN_KEY_BYTES = 16
CSV_FIELDS = [
    "id", "ts", "kind", "result", "reason", "mode", "answer", "outcome", "applied", "number",
    "number_raw", "campaign", "principal", "purpose", "sector", "local_time", "attempts_30d",
    "evidence", "rules", "policy", "degraded", "why", "operator", "adapter", "channel", "uniqueid",
    "policy_from", "policy_to", "config_from", "config_to", "changed", "restart_needed",
    "file", "sha256", "at", "leads", "callable", "blocked", "by_reason",
    "callerid", "node",
    "latency_us", "prev", "hash",
]  # fmt: skip


class Tally:
    """Passes the records through, counting them and noting the chain's ends."""

    def __init__(self, found: Iterator[tuple[bytes, dict[str, Any]]]) -> None:
        self._found = found
        self.count = 0
        self.first_hash = self.last_hash = self.first_prev = ""

    def __iter__(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        for line, record in self._found:
            if not self.count:
                self.first_hash = str(record.get("hash"))
                self.first_prev = str(record.get("prev"))
            self.last_hash = str(record.get("hash"))
            self.count += 1
            yield line, record

    def records(self) -> Iterator[dict[str, Any]]:
        return (record for _, record in self)

    @property
    def ends(self) -> dict[str, Any]:
        """What a manifest says of the records: how many, and the chain's ends."""
        return {
            "records": self.count,
            "first_hash": self.first_hash,
            "last_hash": self.last_hash,
            "first_prev": self.first_prev,
        }


def write_export(
    out: Path, fmt: str, found: Iterable[tuple[bytes, dict[str, Any]]], key: bytes | None
) -> tuple[Tally, str]:
    """Write the records to `out` (mode 0600, like the journal: an export holds the same
    personal data) as `fmt` (jsonl or csv), pseudonymised under `key` when given; the
    tally and the file's SHA-256. OSError when the file cannot be written."""
    tally = Tally(iter(found))
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(descriptor, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            write_csv(handle, tally.records(), mask=key)
        else:
            for line, record in tally:
                if key is not None:
                    line = orjson.dumps(masked(record, key))
                handle.write(line.decode() + "\n")
    digest = hashlib.sha256()
    with out.open("rb") as written:
        for chunk in iter(lambda: written.read(1 << 20), b""):
            digest.update(chunk)
    return tally, digest.hexdigest()


def created_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def pseudonym(number: str, key: bytes) -> str:
    """HMAC-SHA-256 of the E.164 number under the key: stable, not reversible without it."""
    return "p-" + hmac.new(key, number.encode(), hashlib.sha256).hexdigest()[:20]


# The fields whose whole value is the callee's number, and those whose text can name it
# among other words: a rule's detail (the number rule quotes it), the evidence (an
# operator's do-not-call reason, a consent's proof reference) and the channel (Asterisk
# names Local channels after the dialled digits). `callerid` is the call centre's own line.
_NUMBER_FIELDS = ("number", "number_raw")
_TEXT_FIELDS = ("rules", "evidence", "facts", "channel", "why")


def masked(record: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The record with the callee's number replaced by its pseudonym in the fields that
    carry it; every other field, and every key, as it was."""
    number, raw = record.get("number"), record.get("number_raw")
    subject = number if isinstance(number, str) and number else raw
    if not isinstance(subject, str) or not subject:
        return record
    alias = pseudonym(subject, key)
    spellings = _spellings(number, raw)
    masked = dict(record)
    for name in _NUMBER_FIELDS:
        if isinstance(masked.get(name), str) and masked[name]:
            masked[name] = alias
    # Messages quote a number as Python does ('0612 34' or 'a'); a number with digits also
    # stands bare ("+33612345678 mobile FR"), but never inside a longer run of digits (a
    # channel's "-00000015" is not the emergency number 15).
    forms = [(repr(s), repr(alias), False) for s in spellings]
    forms += [(s, alias, True) for s in spellings if any(c in _DIGITS for c in s)]
    for name in _TEXT_FIELDS:
        if name in masked:
            masked[name] = _mask_strings(masked[name], forms)
    return masked


_DIGITS = "0123456789"


def _spellings(number: object, raw: object) -> list[str]:
    """How a record's text may write its number: as dialled, E.164, its digits alone, and
    the national ten digits a dialplan dials (`Local/0612345678@...`)."""
    found = [s for s in (number, raw) if isinstance(s, str) and s]
    if isinstance(raw, str):
        found.append("".join(c for c in raw if c in _DIGITS))
    if isinstance(number, str) and number.startswith("+"):
        found.append(number[1:])
        national = "0" + number[-9:]
        with contextlib.suppress(InvalidNumber):
            if normalise(national).e164 == number:
                found.append(national)
    return list(dict.fromkeys(s for s in found if s))


_Form = tuple[str, str, bool]  # what to find, what replaces it, whether digits may not touch it


def _mask_strings(value: Any, forms: list[_Form]) -> Any:
    if isinstance(value, str):
        return _mask_text(value, forms)
    if isinstance(value, dict):
        return {name: _mask_strings(item, forms) for name, item in value.items()}
    if isinstance(value, list):
        return [_mask_strings(item, forms) for item in value]
    return value


def _mask_text(text: str, forms: list[_Form]) -> str:
    # One pass over the original text (str.find, not a regular expression: compiling one
    # per record would cost more than the rest of the export): a replacement is never
    # searched again, and where two forms start at one place the longer wins.
    hits: list[tuple[int, int, int, str]] = []
    for literal, replacement, bare in forms:
        at = text.find(literal)
        while at >= 0:
            end = at + len(literal)
            alone = not bare or (
                (at == 0 or text[at - 1] not in _DIGITS)
                and (end == len(text) or text[end] not in _DIGITS)
            )
            if alone:
                hits.append((at, -len(literal), end, replacement))
            at = text.find(literal, at + 1)
    if not hits:
        return text
    parts: list[str] = []
    done = 0
    for at, _, end, replacement in sorted(hits):
        if at >= done:
            parts += (text[done:at], replacement)
            done = end
    parts.append(text[done:])
    return "".join(parts)


def write_csv(handle: TextIO, records: Iterator[dict[str, Any]], mask: bytes | None) -> None:
    writer = csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = masked(record, mask) if mask is not None else record
        # Masked first: the pseudonyms replace the number as the journal spells it.
        flat = {
            name: orjson.dumps(value).decode() if isinstance(value, dict | list) else cell(value)
            for name, value in row.items()
        }
        flat["ts"] = datetime.fromtimestamp(record["ts"] / 1000, UTC).isoformat(
            timespec="milliseconds"
        )
        writer.writerow(flat)
