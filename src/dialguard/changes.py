"""Changes to the compliance data made during the day, as the journal records them.

An outcome (`refused`, `do-not-call`), `dnc add`, `dnc remove`, `consent add`, `consent
withdraw`, `contract add` and `contract end` are each written to the audit journal
**before** Redis is told (write-ahead): the journal is the system of record, Redis a view
of it. A change Redis did not take is *pending*; the service applies pending changes in
journal order once Redis answers (dialguard.pending). Applying one twice changes nothing,
so a change met again after a crash is harmless; and each keeps the later word whatever
order changes arrive in (a consent by its given-at instant, a contract's start and end by
when each was recorded), so a change applied late never moves things back.

Pure: records (or their journal lines) in, `Change` out, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from dialguard import import_files
from dialguard.model import Sector

__all__ = [
    "CHANGE_KINDS",
    "FUTURE_SLACK",
    "MAX_PROOF_REF",
    "MAX_SOURCE",
    "Change",
    "ChangeKind",
    "InvalidChange",
    "change_in",
    "change_of",
    "checked_contract_id",
    "checked_principal",
    "checked_proof_ref",
    "checked_source",
    "iso_ms",
    "ms_of",
    "record_detail",
]

# Free text a live change stores (as imports do: docs/imports.md), bounded so that one
# record stays one short line whatever a client sends.
MAX_PROOF_REF = 200
MAX_SOURCE = 64
MAX_CONTRACT_ID = 200
# A change dated ahead of the clock is a typo (or a lie): its record must say when it was
# learned, at the latest now. A few minutes of clock skew between machines are allowed.
FUTURE_SLACK = timedelta(minutes=5)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class ChangeKind(enum.StrEnum):
    OUTCOME = "outcome"  # what the consumer said during a call
    DNC_ADD = "dnc-add"
    DNC_REMOVE = "dnc-remove"
    CONSENT_ADD = "consent-add"
    CONSENT_WITHDRAW = "consent-withdraw"
    CONTRACT_ADD = "contract-add"
    CONTRACT_END = "contract-end"


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
    # consent-add: the consent itself (ms since the epoch; expires_ms 0: no expiry)
    given_ms: int = 0
    expires_ms: int = 0
    proof_ref: str = ""
    source: str = ""  # where it came from (a web form, a CRM): evidence, not a rule
    # contract-add: the contract; contract-end: which one, and its last day (`end`)
    contract_id: str = ""
    sector: str = ""
    start: str = ""  # ISO dates, as the contract import files give them
    end: str = ""  # "": ongoing (contract-add)

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

    @property
    def detail(self) -> str:
        """What a listing shows of it, in a few words."""
        if self.kind is ChangeKind.CONSENT_ADD:
            return f"consent {self.proof_ref}"
        if self.kind is ChangeKind.CONTRACT_ADD:
            return f"contract {self.contract_id} ({self.sector}, {self.start}..{self.end})"
        if self.kind is ChangeKind.CONTRACT_END:
            return f"contract {self.contract_id} ends after {self.end}"
        return self.outcome or self.why


def record_detail(record: dict[str, Any]) -> str:
    """A change record in a few words, for listings: its reason, or what it records."""
    if record.get("kind") == ChangeKind.CONSENT_ADD:
        return f"consent {record.get('proof_ref')}"
    if record.get("kind") == ChangeKind.CONTRACT_ADD:
        end = record.get("end") or "ongoing"
        return f"contract {record.get('contract_id')} ({record.get('sector')}, to {end})"
    if record.get("kind") == ChangeKind.CONTRACT_END:
        return f"contract {record.get('contract_id')} ends after {record.get('end')}"
    return str(record.get("why") or "")


class InvalidChange(ValueError):
    """A live change that cannot be recorded as asked (one line); nothing was written."""


def checked_principal(value: str) -> str:
    if not import_files.is_valid_principal(value):
        raise InvalidChange(f"principal {value!r} must be 1-64 letters, digits, '_', '.', '-'")
    return value


def _checked_text(name: str, value: str, limit: int, *, required: bool) -> str:
    if required and not value:
        raise InvalidChange(f"{name} is required")
    # Printable (no CR, LF, tab or other control), without our field separator '|'.
    if len(value) > limit or not value.isprintable() or not import_files.is_valid_ref(value):
        raise InvalidChange(f"{name} must be at most {limit} printable characters, without '|'")
    return value


def checked_proof_ref(value: str) -> str:
    """The reference of the consent's proof: the professional bears the burden of it."""
    return _checked_text("proof_ref", value, MAX_PROOF_REF, required=True)


def checked_source(value: str) -> str:
    return _checked_text("source", value, MAX_SOURCE, required=False)


def checked_contract_id(value: str) -> str:
    return _checked_text("contract id", value, MAX_CONTRACT_ID, required=True)


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
        change = Change(
            id=str(record["id"]),
            ts_ms=int(record["ts"]),
            kind=ChangeKind(kind),
            number_key=number[1:],
            principal=str(record.get("principal") or ""),
            outcome=str(record.get("outcome") or ""),
            why=str(record.get("why") or ""),
        )
        if change.kind is ChangeKind.CONSENT_ADD:
            return _consent_of(change, record)
        if change.kind in (ChangeKind.CONTRACT_ADD, ChangeKind.CONTRACT_END):
            return _contract_of(change, record)
        return change
    except (KeyError, TypeError, ValueError):
        return None


def iso_ms(moment: datetime) -> str:
    """An instant as a record writes it: UTC, to the millisecond (what `ms_of` reads)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def ms_of(value: Any) -> int:
    """Milliseconds since the epoch of an ISO 8601 instant, exactly (no float on the way:
    the record read back must give the same number as the change applied at once)."""
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError("an instant without its offset")
    return (moment - _EPOCH) // _MS


def _consent_of(change: Change, record: dict[str, Any]) -> Change:
    expires = record.get("expires_at")
    given_ms = ms_of(record["given_at"])
    expires_ms = ms_of(expires) if expires else 0
    if expires_ms and expires_ms <= given_ms:
        raise ValueError("expires_at before given_at")
    return replace(
        change,
        principal=checked_principal(change.principal),
        given_ms=given_ms,
        expires_ms=expires_ms,
        proof_ref=checked_proof_ref(str(record.get("proof_ref") or "")),
        source=checked_source(str(record.get("source") or "")),
    )


def _contract_of(change: Change, record: dict[str, Any]) -> Change:
    contract_id = checked_contract_id(str(record.get("contract_id") or ""))
    end = str(record.get("end") or "")
    if end:
        date.fromisoformat(end)
    if change.kind is ChangeKind.CONTRACT_END:
        if not end:
            raise ValueError("a contract end without its last day")
        return replace(
            change, principal=checked_principal(change.principal), contract_id=contract_id, end=end
        )
    sector = Sector(str(record.get("sector"))).value
    start = str(record.get("start") or "")
    if end and date.fromisoformat(end) < date.fromisoformat(start):
        raise ValueError("end before start")
    return replace(
        change,
        principal=checked_principal(change.principal),
        contract_id=contract_id,
        sector=sector,
        start=start,
        end=end,
    )
