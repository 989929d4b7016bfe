"""Changes to the compliance data made during the day, as the journal records them.

An outcome (`refused`, `do-not-call`), `dnc add`, `dnc remove` and `consent withdraw` are
each written to the audit journal **before** Redis is told (write-ahead): the journal is
the system of record, Redis a view of it. A change Redis did not take is *pending*; the
service applies pending changes in journal order once Redis answers (dialguard.pending).
Applying one twice changes nothing, so a change met again after a crash is harmless.

Pure: records (or their journal lines) in, `Change` out, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["CHANGE_KINDS", "Change", "ChangeKind", "change_in", "change_of"]


class ChangeKind(enum.StrEnum):
    OUTCOME = "outcome"  # what the consumer said during a call
    DNC_ADD = "dnc-add"
    DNC_REMOVE = "dnc-remove"
    CONSENT_WITHDRAW = "consent-withdraw"


CHANGE_KINDS = frozenset(kind.value for kind in ChangeKind)
# The journal's `kind` values of change records, as bytes: a reader skips the (far more
# numerous) decisions by looking for these without parsing the line.
CHANGE_MARKERS = tuple(f'"kind":"{kind}"'.encode() for kind in sorted(CHANGE_KINDS))
_DECISION = b'"kind":"decision"'


@dataclass(frozen=True, slots=True)
class Change:
    """One change, as written to the journal and as applied to Redis."""

    id: str
    ts_ms: int
    kind: ChangeKind
    number_key: str  # E.164 digits
    # Outcomes and withdrawals: whose consent, whose refusal. A do-not-call added or
    # removed with a principal is that principal's own entry (`dnc_scope`).
    principal: str = ""
    outcome: str = ""  # outcomes: refused or do-not-call
    why: str = ""  # the do-not-call entry's reason, or why a number was removed

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.ts_ms / 1000, UTC)

    @property
    def adds_dnc(self) -> bool:
        return self.kind is ChangeKind.DNC_ADD or (
            self.kind is ChangeKind.OUTCOME and self.outcome == "do-not-call"
        )

    @property
    def dnc_scope(self) -> str:
        """The principal a do-not-call entry (or its removal) is limited to; "" for the
        company's list. An outcome's principal says whose call it was, not a scope: a
        do-not-call said during a call goes on the company's list, as it always has."""
        if self.kind is ChangeKind.DNC_ADD or self.kind is ChangeKind.DNC_REMOVE:
            return self.principal
        return ""

    @property
    def refuses(self) -> bool:
        return self.kind is ChangeKind.OUTCOME and self.outcome == "refused"

    @property
    def withdraws(self) -> bool:
        """A refusal withdraws consent too."""
        return self.kind is ChangeKind.CONSENT_WITHDRAW or self.refuses


def change_in(line: bytes) -> Change | None:
    """The change a journal line holds, read without parsing the (far more numerous)
    decision lines: their kind is among their first fields."""
    if line.find(_DECISION, 0, 200) >= 0 or not any(m in line for m in CHANGE_MARKERS):
        return None
    try:
        return change_of(orjson.loads(line))
    except orjson.JSONDecodeError:
        return None


def change_of(record: dict[str, Any]) -> Change | None:
    """The change a journal record holds; None for decisions and anything unreadable
    (verify, not this, judges a record's integrity)."""
    kind = record.get("kind")
    if kind not in CHANGE_KINDS:
        return None
    number = str(record.get("number") or "")
    if not number.startswith("+") or not number[1:].isdigit():
        return None
    if kind == ChangeKind.OUTCOME and record.get("outcome") not in ("refused", "do-not-call"):
        return None
    try:
        return Change(
            id=str(record["id"]),
            ts_ms=int(record["ts"]),
            kind=ChangeKind(kind),
            number_key=number[1:],
            principal=str(record.get("principal") or ""),
            outcome=str(record.get("outcome") or ""),
            why=str(record.get("why") or ""),
        )
    except (KeyError, TypeError, ValueError):
        return None
