"""The data every layer shares: requests, campaigns, facts, decisions. No behaviour."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, NamedTuple

from dialguard.callerids import CallerIds
from dialguard.numbers import Number


class Result(enum.StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class Reason(enum.StrEnum):
    """Stable identifiers written to Asterisk and the audit journal (docs/rules.md)."""

    # allow bases
    CONSENT = "CONSENT"
    CONTRACT = "CONTRACT"
    PRESS = "PRESS"
    NON_COMMERCIAL = "NON_COMMERCIAL"
    SERVICE = "SERVICE"
    OUT_OF_SCOPE = "OUT_OF_SCOPE"
    EMERGENCY = "EMERGENCY"
    OPTOUT_CLEAR = "OPTOUT_CLEAR"
    # deny reasons
    INVALID_NUMBER = "INVALID_NUMBER"
    UNKNOWN_CAMPAIGN = "UNKNOWN_CAMPAIGN"
    INTERNAL_DNC = "INTERNAL_DNC"
    OPTOUT_LISTED = "OPTOUT_LISTED"
    OPTOUT_UNVERIFIED = "OPTOUT_UNVERIFIED"
    NO_CONSENT = "NO_CONSENT"
    CONSENT_EXPIRED = "CONSENT_EXPIRED"
    CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"
    SECTOR_BAN = "SECTOR_BAN"
    RECENT_REFUSAL = "RECENT_REFUSAL"
    OUTSIDE_HOURS = "OUTSIDE_HOURS"
    HOLIDAY = "HOLIDAY"
    FREQUENCY_CAP = "FREQUENCY_CAP"
    CALLER_ID_MISSING = "CALLER_ID_MISSING"
    CALLER_ID_FORBIDDEN = "CALLER_ID_FORBIDDEN"
    CALLER_ID_NOT_AUTHORISED = "CALLER_ID_NOT_AUTHORISED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    DEADLINE = "DEADLINE"


class Purpose(enum.StrEnum):
    PROSPECTING = "prospecting"
    PRESS = "press"
    NON_COMMERCIAL = "non_commercial"
    SERVICE = "service"


class Sector(enum.StrEnum):
    GENERAL = "general"
    ENERGY_RENOVATION = "energy_renovation"
    HOME_ADAPTATION = "home_adaptation"
    CPF = "cpf"


class FailMode(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class Mode(enum.StrEnum):
    """What a campaign's answers do: enforce the decision, or only watch it (shadow: every
    call is decided, counted and audited as usual, and answered ALLOW; a denial shows as
    reason SHADOW_<reason>). How a call centre turns dialguard on without risk."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


SHADOW_PREFIX = "SHADOW_"


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    principal: str  # the professional who commissions the calls; the cap and consents are its
    purpose: Purpose
    sector: Sector
    fail_mode: FailMode = FailMode.CLOSED
    outside_prefix: str = ""
    honour_dnc: bool = True
    mode: Mode = Mode.ENFORCE
    # The caller-ID rule (L221-17; ARCEP 2022-1583): dialled by an automated system
    # (predictive, progressive, robocall), and the numbers the company may present. A
    # campaign with neither is judged on the other rules only.
    automated: bool = False
    caller_ids: CallerIds | None = None
    # The file some of them come from (caller_ids_file): for reports, not for the rules.
    caller_ids_file: Path | None = field(default=None, compare=False)

    @property
    def checks_caller_id(self) -> bool:
        return self.automated or self.caller_ids is not None


@dataclass(frozen=True, slots=True)
class CallRequest:
    number_raw: str
    campaign: str
    channel: str = ""
    uniqueid: str = ""
    callerid: str = ""  # the number presented: agi_callerid, or what the dialplan passes
    adapter: str = "cli"
    callingpres: str = ""  # agi_callingpres (Asterisk's presentation value); "" unknown


# Asterisk's presentation values (include/asterisk/callerid.h): bits 0x60 say whether the
# number may be shown: 0x00 allowed, 0x20 restricted, 0x40 unavailable.
_PRESENTATION_MASK = 0x60
# What Asterisk and dialers write when there is no number to show.
WITHHELD = frozenset({"", "unknown", "anonymous", "restricted", "private", "withheld"})


@dataclass(frozen=True, slots=True)
class CallerId:
    """The caller ID a call presents to the consumer."""

    raw: str  # as presented ("unknown" when Asterisk has none)
    restricted: bool = False  # presentation restricted or unavailable: shown as withheld

    @classmethod
    def of(cls, request: CallRequest) -> CallerId:
        pres = request.callingpres.strip()
        if not pres:
            restricted = False  # not told (CLI, ARI): the number alone decides
        elif pres.isdigit():
            restricted = int(pres) & _PRESENTATION_MASK != 0
        else:
            restricted = True  # not a value Asterisk writes: not shown as allowed
        return cls(request.callerid, restricted)

    @property
    def withheld(self) -> bool:
        return self.restricted or self.raw.strip().lower() in WITHHELD


@dataclass(frozen=True, slots=True)
class DncEntry:
    reason: str
    added_at: datetime | None  # live entries; an imported list keeps no date per number
    list_version: str | None = None  # set when the entry comes from an imported list
    # The principal's own entry (a VICIdial campaign list), not the company's list.
    principal_only: bool = False


@dataclass(frozen=True, slots=True)
class OptoutResult:
    """One opt-out registry answer (Bloctel) for a number."""

    listed: bool
    checked_on: date
    ref: str  # the registry's request identifier, kept as evidence


@dataclass(frozen=True, slots=True)
class Consent:
    given_at: datetime
    expires_at: datetime | None
    proof_ref: str


@dataclass(frozen=True, slots=True)
class Contract:
    contract_id: str
    sector: Sector
    start: date
    end: date | None  # None: ongoing


@dataclass(frozen=True, slots=True)
class Facts:
    """What the store knows about one number for one principal."""

    dnc: DncEntry | None = None
    optout: OptoutResult | None = None
    consent: Consent | None = None
    withdrawn_at: datetime | None = None
    contracts: tuple[Contract, ...] = ()
    refused_at: datetime | None = None
    attempts_30d: int = 0  # attempts in the window, before this one
    reserved: bool = False  # this attempt took one of the remaining slots


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The facts could not be read: the campaign's fail mode decides."""

    reason: Reason  # STORE_UNAVAILABLE or DEADLINE
    detail: str


class Outcome(enum.StrEnum):
    PASS = "pass"  # nothing against the call here
    BASIS = "basis"  # establishes the legal basis; later rules still apply
    ALLOW = "allow"  # settles the call: later rules do not apply
    DENY = "deny"
    SKIPPED = "skipped"  # facts unavailable and the campaign fails open


class RuleResult(NamedTuple):
    # A named tuple, not a frozen dataclass: a decision makes a dozen of these, and tuple
    # construction is several times cheaper on the per-call path.
    rule: str
    outcome: Outcome
    reason: Reason | None
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "outcome": self.outcome.value,
            "reason": self.reason.value if self.reason else None,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """What audit records name: the policy, the version that decided (its effective
    date), and the hash of the policy file's bytes."""

    name: str
    version: str
    hash: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "hash": self.hash}


@dataclass(frozen=True, slots=True)
class Decision:
    result: Result
    reason: Reason
    rules: tuple[RuleResult, ...]
    evidence: Mapping[str, Any]
    number: Number | None
    local_time: str  # callee-local ISO 8601, "" when the number could not be placed
    policy: PolicyRef
    degraded: str = ""  # why, when the fail mode decided instead of the facts
    counts_attempt: bool = False  # a real call would count against the 30-day cap
    attempts_30d: int | None = None
    detail: str = field(default="")
    # What the rules read: the facts (for the audit record's snapshot, which a replay
    # decides again from), and why the store could not be read, when it could not.
    facts: Facts | None = None
    unavailable: Unavailable | None = None

    @property
    def allowed(self) -> bool:
        return self.result is Result.ALLOW
