"""The French rules as a pure function: (call, facts, time, policy) -> Decision.

No I/O, no clock: the instant of the call is an argument. Each rule is one entry of
`RULES`: its name, its legal source, whether it needs the facts, and a plain function over
one `Context`; `decide` walks the table in order and docs/rules.md mirrors it. The first
rule that denies (or settles the call) decides; a rule that establishes the legal basis
lets the later rules (days, hours, frequency) still apply.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import holidays
from dateutil.easter import easter

from dialguard.model import (
    CallerId,
    Campaign,
    Decision,
    Facts,
    FailMode,
    Outcome,
    PolicyRef,
    Purpose,
    Reason,
    Result,
    RuleResult,
    Sector,
    Unavailable,
)
from dialguard.numbers import InvalidNumber, Kind, Number, normalise

__all__ = [
    "RULES",
    "Finding",
    "Moment",
    "Policy",
    "Prepared",
    "Regime",
    "Rule",
    "RuleNeedsFacts",
    "Version",
    "decide",
    "decide_unavailable",
    "differences",
    "outcome",
    "prepare",
    "retroactive",
    "would_count",
]


class Regime(enum.StrEnum):
    """The legal test for a consumer sales call (L223-1): the opt-out registry (Bloctel)
    before 2026-08-11, the consumer's prior consent from then on."""

    OPTOUT = "optout"
    CONSENT = "consent"


@dataclass(frozen=True, slots=True)
class Version:
    """The values of a policy in force from `effective_from` (a callee-local date) until
    the next version's date. Everything but the first three fields is a value the rules
    read; `differences` compares those."""

    effective_from: date
    source: str  # the text that puts these values in force
    title: str
    regime: Regime
    out_of_scope_kinds: frozenset[Kind]
    optout_freshness_days: int
    optout_suppress_in_consent_regime: bool
    consent_max_validity_days: int
    refusal_enabled: bool
    refusal_block_days: int
    days: frozenset[int]  # 0 = Monday
    windows: tuple[tuple[time, time], ...]
    holidays_national: bool
    holidays_local: bool
    local_days: Mapping[str, tuple[str, ...]]
    max_attempts: int
    window_days: int
    sector_bans: Mapping[Sector, date]
    # Caller IDs an automated system may present (ARCEP 2022-1583): national numbers
    # starting with these (the numéros polyvalents vérifiés), special-rate numbers but
    # those starting with the excluded prefixes, and short numbers.
    caller_id_verified_prefixes: tuple[str, ...] = ()
    caller_id_special_excluded: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The version's name in audit records: its effective date."""
        return self.effective_from.isoformat()


# The fields of a Version that are values the rules read (not its date, source, title).
VALUE_FIELDS = tuple(f.name for f in fields(Version))[3:]


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy file: its versions by effective date. The version in force on a call's
    callee-local date decides it (`at`); before the first version's date, the first."""

    name: str
    hash: str  # of the file's bytes
    default_timezone: str  # not versioned: it places the call's date, which picks the version
    versions: tuple[Version, ...]  # in date order, at least one
    notes: tuple[str, ...] = ()  # what reading the file had to say (an old format...)
    _starts: tuple[date, ...] = field(default=(), init=False, repr=False, compare=False)
    _refs: tuple[PolicyRef, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("a policy needs at least one version")
        starts = tuple(v.effective_from for v in self.versions)
        if any(a >= b for a, b in pairwise(starts)):
            raise ValueError("policy versions must be in date order, one per date")
        object.__setattr__(self, "_starts", starts)
        refs = tuple(PolicyRef(self.name, v.id, self.hash) for v in self.versions)
        object.__setattr__(self, "_refs", refs)

    def index_at(self, day: date) -> int:
        """The index of the version in force on `day` (O(log n))."""
        return max(bisect_right(self._starts, day) - 1, 0)

    def at(self, day: date) -> Version:
        return self.versions[self.index_at(day)]

    def optout_regime_from(self, moment: datetime) -> bool:
        """Whether a version of the opt-out regime is in force at or after `moment`, in
        any zone (a callee-local date is within a day of the UTC one). Without one, the
        registry is read only as the consent regime reads it (`_consent_basis`): a
        listing, once a consent is found; a number checked clear, or without a consent,
        is decided as one never checked."""
        first = self.index_at(moment.astimezone(UTC).date() - timedelta(days=1))
        return any(v.regime is Regime.OPTOUT for v in self.versions[first:])

    def on(self, moment: datetime) -> Version:
        """The version in force at `moment`, dated in `default_timezone` (for what has no
        callee: command-line defaults, reports)."""
        return self.at(moment.astimezone(_zone(self.default_timezone)).date())

    def ref_at(self, day: date) -> PolicyRef:
        return self._refs[self.index_at(day)]

    def with_values(self, **changes: Any) -> Policy:
        """This policy with `changes` made to every version (tests, experiments)."""
        versions = tuple(replace(v, **changes) for v in self.versions)
        return Policy(self.name, self.hash, self.default_timezone, versions, self.notes)


def differences(before: Version | None, after: Version) -> list[tuple[str, Any, Any]]:
    """(field, before, after) for each value that differs; every value when no `before`."""
    return [
        (name, getattr(before, name) if before else None, getattr(after, name))
        for name in VALUE_FIELDS
        if before is None or getattr(before, name) != getattr(after, name)
    ]


def retroactive(old: Policy | None, new: Policy, today: date) -> list[str]:
    """The versions of `new` that change what was in force on days already begun (up to
    `today`, included): allowed, since they only decide new calls, but worth saying, as
    calls already decided on those days were judged otherwise."""
    if old is None:
        return []
    notes = []
    dates = sorted({v.effective_from for v in (*old.versions, *new.versions)})
    for day in dates:
        if day > today:
            break
        was, now = old.at(day), new.at(day)
        changed = differences(was, now)
        if changed:
            names = ", ".join(name for name, _, _ in changed)
            notes.append(
                f"version {now.id} changes what was in force from {day}, a day already "
                f"begun ({names}): calls decided since then keep their decisions"
            )
    return notes


@dataclass(slots=True)  # not frozen: built once per call, and frozen init is slow
class Context:
    campaign: Campaign | None
    number: Number | None
    number_error: str
    facts: Facts | Unavailable
    now: datetime  # aware, the instant of the call
    policy: Version  # the version in force on the call's callee-local date
    local: tuple[datetime, ...]  # the call's instant in each callee zone
    ref: PolicyRef  # the policy, that version, the file's hash
    caller: CallerId | None = None  # the caller ID presented, when the campaign checks it
    caller_evidence: dict[str, Any] | None = None  # set by the caller-ID rule

    @property
    def local_date(self) -> date:
        return self.local[0].date()

    @property
    def consent_regime(self) -> bool:
        return self.policy.regime is Regime.CONSENT


# What a rule finds: its outcome, the reason code when it settles or denies, a detail.
Finding = tuple[Outcome, Reason | None, str]
RuleCheck = Callable[[Context], Finding]


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of the table `decide` walks (docs/rules.md mirrors it, row for row)."""

    name: str
    source: str  # the legal source, as docs/rules.md cites it
    needs_facts: bool  # False: decided before the store is read (see Prepared)
    check: RuleCheck


class _FactsUnavailable(Exception):
    """Raised by `_facts` when a rule needs what the store could not give."""


class RuleNeedsFacts(TypeError):
    """A rule marked `needs_facts=False` read the facts: a mistake in the table."""


def _pass(detail: str = "") -> Finding:
    return Outcome.PASS, None, detail


def _deny(reason: Reason, detail: str) -> Finding:
    return Outcome.DENY, reason, detail


def _allow(reason: Reason, detail: str) -> Finding:
    return Outcome.ALLOW, reason, detail


def _basis(reason: Reason, detail: str) -> Finding:
    return Outcome.BASIS, reason, detail


# The facts of a context whose rules run before the store is read: reading them is a
# mistake in the rules table, not a missing fact.
_NOT_READ_YET = Unavailable(Reason.STORE_UNAVAILABLE, "the facts are not read yet")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _facts(ctx: Context) -> Facts:
    # Rules read facts only when they need them, so a rule that can decide without them
    # (a sector not banned, the refusal rule switched off) still decides when Redis is down.
    if isinstance(ctx.facts, Unavailable):
        if ctx.facts is _NOT_READ_YET:
            raise RuleNeedsFacts("a rule read the facts before they were read")
        raise _FactsUnavailable
    return ctx.facts


def _campaign(ctx: Context) -> Campaign:
    assert ctx.campaign is not None
    return ctx.campaign


# --- the rules, in order ----------------------------------------------------------------


def check_emergency(ctx: Context) -> Finding:
    if ctx.number is not None and ctx.number.never_blocked:
        return _allow(Reason.EMERGENCY, f"{ctx.number.kind} number, never blocked")
    return _pass()


def check_campaign(ctx: Context) -> Finding:
    if ctx.campaign is None:
        return _deny(Reason.UNKNOWN_CAMPAIGN, "campaign not in the configuration")
    return _pass(ctx.campaign.name)


def check_number(ctx: Context) -> Finding:
    if ctx.number is None:
        return _deny(Reason.INVALID_NUMBER, ctx.number_error)
    return _pass(f"{ctx.number.e164} {ctx.number.kind} {ctx.number.territory}")


_FRENCH_PLAN = ("33", "262", "590", "594", "596")


@lru_cache(maxsize=4096)
def _presented(raw: str) -> Number | None:
    # A campaign presents a handful of numbers: each is normalised once.
    try:
        return normalise(raw)
    except InvalidNumber:
        return None


def _national(number: Number) -> str:
    """The ten-digit national form of a number of the French plan ("" for others)."""
    key = number.key
    if number.kind is Kind.FOREIGN or not key.startswith(_FRENCH_PLAN) or len(key) < 9:
        return ""
    return "0" + key[-9:]


def _verified_for_automated(number: Number, version: Version) -> bool:
    if number.never_blocked:  # a short number
        return True
    national = _national(number)
    if not national:
        return False
    if number.kind is Kind.SPECIAL_RATE:
        excluded = version.caller_id_special_excluded
        return not (excluded and national.startswith(excluded))
    verified = version.caller_id_verified_prefixes
    return bool(verified) and national.startswith(verified)


def check_caller_id(ctx: Context) -> Finding:
    campaign = _campaign(ctx)
    if not campaign.checks_caller_id:
        return _pass("no caller-ID rule for this campaign")
    caller = ctx.caller
    if caller is None or caller.withheld:
        shown = "restricted presentation" if caller and caller.restricted else "no number"
        return _deny(Reason.CALLER_ID_MISSING, f"caller ID withheld ({shown})")
    presented = _presented(caller.raw.strip())
    if presented is None:
        return _deny(Reason.CALLER_ID_NOT_AUTHORISED, f"{caller.raw!r} is not a number")
    evidence = ctx.caller_evidence = {"number": presented.e164}
    # The authorisation first, for the evidence (and a replay under another policy): a
    # forbidden number still wins over an unauthorised one.
    held = other = None
    if campaign.caller_ids is not None:
        digits = presented.e164 if presented.never_blocked else presented.key
        held, other = campaign.caller_ids.authorisation(digits, ctx.local_date)
        evidence["authorised"] = held is not None
        found = held or other
        if found is not None:
            evidence["ref"] = found.ref
    if presented.kind is Kind.MOBILE:
        return _deny(
            Reason.CALLER_ID_FORBIDDEN, f"{presented.e164}: a call centre never shows a mobile"
        )
    if campaign.automated and not _verified_for_automated(presented, ctx.policy):
        return _deny(
            Reason.CALLER_ID_FORBIDDEN,
            f"{presented.e164}: not a verified number (NPV), special or short number, as an"
            " automated system must show",
        )
    if campaign.caller_ids is None:
        return _pass(f"{presented.e164}: a verified number for an automated system")
    if held is None:
        if other is not None:
            return _deny(
                Reason.CALLER_ID_NOT_AUTHORISED,
                f"{presented.e164}: authorisation {other.ref or other.text!r} does not hold on "
                f"{ctx.local_date} ({other.valid_from or '...'} to {other.valid_until or '...'})",
            )
        return _deny(
            Reason.CALLER_ID_NOT_AUTHORISED,
            f"{presented.e164}: not among the caller IDs of campaign {campaign.name}",
        )
    return _pass(f"{presented.e164} authorised ({held.ref or held.text})")


def check_internal_dnc(ctx: Context) -> Finding:
    dnc = _facts(ctx).dnc
    if dnc is None:
        return _pass("not on the company's list")
    if not _campaign(ctx).honour_dnc:
        return _pass("listed, but this campaign does not honour the list")
    if dnc.principal_only:
        principal = _campaign(ctx).principal
        return _deny(Reason.INTERNAL_DNC, f"on {principal}'s own do-not-call list ({dnc.reason})")
    return _deny(Reason.INTERNAL_DNC, f"on the company's list ({dnc.reason})")


def check_scope(ctx: Context) -> Finding:
    assert ctx.number is not None
    if ctx.number.kind in ctx.policy.out_of_scope_kinds:
        return _allow(Reason.OUT_OF_SCOPE, f"{ctx.number.kind} numbers are not consumers")
    return _pass(str(ctx.number.kind))


def check_purpose(ctx: Context) -> Finding:
    purpose = _campaign(ctx).purpose
    if purpose is Purpose.NON_COMMERCIAL:
        return _allow(Reason.NON_COMMERCIAL, "nothing is sold: not a sales call")
    if purpose is Purpose.SERVICE:
        return _allow(Reason.SERVICE, "about an existing relationship: not prospecting")
    return _pass(str(purpose))


def _ongoing_contract(ctx: Context) -> str | None:
    """The id of a contract being performed today whose object relates to the campaign."""
    today = ctx.local_date
    sector = _campaign(ctx).sector
    for contract in _facts(ctx).contracts:
        ongoing = contract.start <= today and (contract.end is None or today <= contract.end)
        if ongoing and contract.sector is sector:
            return contract.contract_id
    return None


def check_sector_ban(ctx: Context) -> Finding:
    sector = _campaign(ctx).sector
    banned_from = ctx.policy.sector_bans.get(sector)
    if banned_from is None or ctx.local_date < banned_from:
        return _pass(f"{sector} not banned")
    if isinstance(ctx.facts, Unavailable):
        # Whatever the fail mode: without a contract such a call is unlawful, and the only
        # exception cannot be checked.
        return _deny(
            Reason.SECTOR_BAN,
            f"{sector} banned since {banned_from}; contract unknown ({ctx.facts.detail})",
        )
    contract_id = _ongoing_contract(ctx)
    if contract_id is not None:
        return _pass(f"{sector} banned, but contract {contract_id} is ongoing")
    return _deny(Reason.SECTOR_BAN, f"prospecting for {sector} banned since {banned_from}")


def check_recent_refusal(ctx: Context) -> Finding:
    if not ctx.policy.refusal_enabled:
        return _pass("rule switched off in the policy")
    refused_at = _facts(ctx).refused_at
    if refused_at is None:
        return _pass("no refusal on record")
    refusal_day = refused_at.astimezone(ctx.local[0].tzinfo).date()
    last_blocked = refusal_day + timedelta(days=ctx.policy.refusal_block_days)
    if ctx.local_date <= last_blocked:
        return _deny(
            Reason.RECENT_REFUSAL,
            f"refused on {refusal_day}; no contact until {last_blocked} included",
        )
    return _pass(f"refusal on {refusal_day} is over")


def check_legal_basis(ctx: Context) -> Finding:
    contract_id = _ongoing_contract(ctx)
    if contract_id is not None:
        return _basis(Reason.CONTRACT, f"ongoing contract {contract_id}")
    if _campaign(ctx).purpose is Purpose.PRESS:
        return _basis(Reason.PRESS, "press offer, exempt from the list/consent test")
    if ctx.consent_regime:
        return _consent_basis(ctx)
    return _optout_basis(ctx)


def _optout_basis(ctx: Context) -> Finding:
    optout = _facts(ctx).optout
    if optout is None:
        return _deny(Reason.OPTOUT_UNVERIFIED, "never checked against the registry")
    if optout.listed:
        return _deny(Reason.OPTOUT_LISTED, f"listed (check {optout.ref})")
    age = (ctx.local_date - optout.checked_on).days
    if not 0 <= age < ctx.policy.optout_freshness_days:
        return _deny(
            Reason.OPTOUT_UNVERIFIED,
            f"registry check of {optout.checked_on} is {age} days old",
        )
    return _basis(Reason.OPTOUT_CLEAR, f"not listed, checked {optout.checked_on}")


def _consent_basis(ctx: Context) -> Finding:
    facts = _facts(ctx)
    consent = facts.consent
    if consent is None or consent.given_at > ctx.now:
        return _deny(Reason.NO_CONSENT, "no prior consent for this principal")
    optout = facts.optout
    if (
        ctx.policy.optout_suppress_in_consent_regime
        and optout is not None
        and optout.listed
        and consent.given_at.astimezone(ctx.local[0].tzinfo).date() <= optout.checked_on
    ):
        return _deny(
            Reason.OPTOUT_LISTED,
            f"registry listing ({optout.ref}) not superseded by a later consent",
        )
    withdrawn_at = facts.withdrawn_at
    if withdrawn_at is not None and consent.given_at <= withdrawn_at <= ctx.now:
        return _deny(Reason.CONSENT_WITHDRAWN, f"withdrawn at {_iso(withdrawn_at)}")
    longest = consent.given_at + timedelta(days=ctx.policy.consent_max_validity_days)
    expires_at = longest if consent.expires_at is None else min(consent.expires_at, longest)
    if ctx.now >= expires_at:
        return _deny(Reason.CONSENT_EXPIRED, f"expired at {_iso(expires_at)}")
    return _basis(Reason.CONSENT, f"consent {consent.proof_ref}")


def check_holiday(ctx: Context) -> Finding:
    assert ctx.number is not None
    for local in ctx.local:
        name = holiday_name(ctx.policy, ctx.number.territory, local.date())
        if name:
            return _deny(Reason.HOLIDAY, f"{local.date()} is a public holiday ({name})")
    return _pass("not a public holiday")


def check_hours(ctx: Context) -> Finding:
    for local in ctx.local:
        if local.weekday() not in ctx.policy.days:
            return _deny(Reason.OUTSIDE_HOURS, f"{local:%A} in {local.tzinfo}")
        clock = local.time().replace(tzinfo=None)
        if not any(start <= clock < end for start, end in ctx.policy.windows):
            return _deny(Reason.OUTSIDE_HOURS, f"{clock:%H:%M} in {local.tzinfo}")
    return _pass("within the calling hours")


def check_frequency(ctx: Context) -> Finding:
    attempts = _facts(ctx).attempts_30d
    cap = ctx.policy.max_attempts
    if attempts >= cap:
        return _deny(
            Reason.FREQUENCY_CAP,
            f"{attempts} attempts in {ctx.policy.window_days} days (cap {cap})",
        )
    return _pass(f"{attempts} of {cap} attempts used")


RULES: tuple[Rule, ...] = (
    Rule("emergency", "ARCEP numbering plan; CPCE emergency numbers", False, check_emergency),
    Rule("campaign", "dialguard configuration", False, check_campaign),
    Rule("number", "ARCEP national numbering plan", False, check_number),
    Rule(
        "caller_id",
        "C. consommation L221-17; ARCEP décision 2022-1583",
        False,
        check_caller_id,
    ),
    Rule("internal_dnc", "C. consommation L221-16 (right to object)", True, check_internal_dnc),
    Rule("scope", "C. consommation L223-1 (consumers only)", False, check_scope),
    Rule("purpose", "C. consommation L223-1, L223-5", False, check_purpose),
    Rule(
        "sector_ban",
        "C. consommation L223-1 (Loi 2020-901; Loi 2025-594); C. travail L6323-8-1",
        True,
        check_sector_ban,
    ),
    Rule(
        "recent_refusal",
        "C. consommation D223-9 (Décret 2022-1313)",
        True,
        check_recent_refusal,
    ),
    Rule("legal_basis", "C. consommation L223-1 (Loi 2025-594 art. 13)", True, check_legal_basis),
    Rule("holiday", "C. consommation D223-9; C. travail L3133-1, L3134-13", False, check_holiday),
    Rule("hours", "C. consommation D223-9 (Décret 2022-1313)", False, check_hours),
    Rule("frequency", "C. consommation D223-9 (Décret 2022-1313)", True, check_frequency),
)


@dataclass(frozen=True, slots=True)
class Prepared:
    """The rules that need no facts, evaluated before the facts are read.

    In rule order, up to the first that does not pass: `decide` reuses them, and whether
    they all pass tells the store to reserve the attempt's slot with the facts read. The
    version in force on the call's date comes with them: its cap and window are the ones
    the store counts with.
    """

    local: tuple[datetime, ...]
    results: Mapping[str, RuleResult]
    would_count: bool  # an attempt could be allowed and counted, as far as these rules tell
    version: Version
    ref: PolicyRef
    caller_evidence: Mapping[str, Any] | None = None  # the caller ID and its authorisation


def _fact_free(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    return tuple(rule for rule in rules if not rule.needs_facts)


_FACT_FREE_RULES = _fact_free(RULES)


def prepare(
    campaign: Campaign | None,
    number: Number | None,
    now: datetime,
    policy: Policy,
    number_error: str = "",
    rules: tuple[Rule, ...] = RULES,
    caller: CallerId | None = None,
) -> Prepared:
    """Evaluate the rules of `rules` that need no facts, before the facts are read."""
    if now.tzinfo is None:
        raise ValueError("the instant of a call must carry its time zone")
    local = _local_times(number, now, policy.default_timezone)
    index = policy.index_at(local[0].date())
    version, ref = policy.versions[index], policy._refs[index]
    ctx = Context(campaign, number, number_error, _NOT_READ_YET, now, version, local, ref, caller)
    results: dict[str, RuleResult] = {}
    fact_free = _FACT_FREE_RULES if rules is RULES else _fact_free(rules)
    for rule in fact_free:
        try:
            result = results[rule.name] = RuleResult(rule.name, *rule.check(ctx))
        except RuleNeedsFacts:
            raise RuleNeedsFacts(f"rule {rule.name} reads facts: set needs_facts") from None
        if result.outcome is not Outcome.PASS:
            return Prepared(local, results, False, version, ref, ctx.caller_evidence)
    return Prepared(local, results, True, version, ref, ctx.caller_evidence)


def would_count(
    campaign: Campaign | None, number: Number | None, now: datetime, policy: Policy
) -> bool:
    """See `Prepared.would_count`."""
    return prepare(campaign, number, now, policy).would_count


def decide(
    campaign: Campaign | None,
    number: Number | None,
    facts: Facts | Unavailable,
    now: datetime,
    policy: Policy,
    number_error: str = "",
    prepared: Prepared | None = None,
    caller: CallerId | None = None,
) -> Decision:
    """Evaluate the rules in order; the first that settles the call decides. `caller`:
    the caller ID presented (with `prepared`, the one it was prepared with)."""
    if prepared is None:
        prepared = prepare(campaign, number, now, policy, number_error, caller=caller)
    ctx = Context(
        campaign, number, number_error, facts, now, prepared.version, prepared.local, prepared.ref
    )
    if prepared.caller_evidence is not None:
        ctx.caller_evidence = dict(prepared.caller_evidence)
    results: list[RuleResult] = []
    basis: Reason | None = None
    degraded = ""
    for rule in RULES:
        try:
            result = prepared.results.get(rule.name) or RuleResult(rule.name, *rule.check(ctx))
        except _FactsUnavailable:
            assert isinstance(facts, Unavailable)
            if _campaign(ctx).fail_mode is FailMode.CLOSED:
                degraded = f"{facts.detail}; failing closed"
                results.append(RuleResult(rule.name, Outcome.DENY, facts.reason, degraded))
                return _decision(ctx, Result.DENY, facts.reason, results, degraded)
            results.append(RuleResult(rule.name, Outcome.SKIPPED, None, facts.detail))
            degraded = f"{facts.detail}; failing open"
            continue
        results.append(result)
        if result.outcome is Outcome.DENY:
            assert result.reason is not None
            return _decision(ctx, Result.DENY, result.reason, results, degraded)
        if result.outcome is Outcome.ALLOW:
            assert result.reason is not None
            return _decision(ctx, Result.ALLOW, result.reason, results, degraded)
        if result.outcome is Outcome.BASIS:
            basis = result.reason
    if basis is None:
        # Only a fail-open campaign reaches the end without a basis: say why it passed.
        assert isinstance(facts, Unavailable)
        basis = facts.reason
    return _decision(ctx, Result.ALLOW, basis, results, degraded, counts_attempt=True)


# Sufficient conditions for a rule to pass, each read straight off its check: when one
# holds, `outcome` skips the check (and the explanation it would format). When it does
# not, the check itself runs. tests/test_replay.py holds `outcome` equal to `decide`.
_PASSES: Mapping[str, Callable[[Context], bool]] = {
    "internal_dnc": lambda ctx: _facts(ctx).dnc is None,
    "sector_ban": lambda ctx: _campaign(ctx).sector not in ctx.policy.sector_bans,
    "recent_refusal": lambda ctx: not ctx.policy.refusal_enabled or _facts(ctx).refused_at is None,
    "frequency": lambda ctx: _facts(ctx).attempts_30d < ctx.policy.max_attempts,
}
# The rules that need no facts and read no time of day: their findings hold for a whole
# callee-local day (`outcome` keeps them per campaign, number kind and zones, caller ID).
_DAILY = frozenset(r.name for r in RULES if not r.needs_facts and r.name != "hours")
_DAILY_RULES = tuple(r for r in RULES if r.name in _DAILY)
# Each rule of the table in order: its name, its check, its sufficient condition to pass,
# and for a daily rule its place among the day's findings (else -1).
_Walk = tuple[tuple[str, RuleCheck, Callable[[Context], bool] | None, int], ...]
_OUTCOME_WALK: _Walk = tuple(
    (r.name, r.check, _PASSES.get(r.name), _DAILY_RULES.index(r) if r.name in _DAILY else -1)
    for r in RULES
)
# At one instant (Moment), every rule that needs no facts holds for a kind of number.
_MOMENT_WALK: _Walk = tuple(
    (r.name, r.check, _PASSES.get(r.name), -1 if r.needs_facts else _FACT_FREE_RULES.index(r))
    for r in RULES
)
_Found = tuple[Finding, ...]


def outcome(
    campaign: Campaign,
    number: Number,
    facts: Facts,
    now: datetime,
    policy: Policy,
    caller: CallerId | None = None,
    daily: dict[tuple[Any, ...], _Found] | None = None,
) -> tuple[Result, Reason]:
    """The result and reason `decide` gives for a call whose facts were read, without the
    rest of the decision (for `audit replay`, a million calls at a time): the same rules
    in the same order, those that pass mostly without formatting why. `daily`: a cache
    the caller keeps, of the findings that hold for a callee-local day."""
    local = _local_times(number, now, policy.default_timezone)
    index = policy.index_at(local[0].date())
    ctx = Context(
        campaign, number, "", facts, now, policy.versions[index], local, policy._refs[index], caller
    )
    found: _Found | None = None
    if daily is not None:
        days = local[0].date() if len(local) == 1 else tuple(m.date() for m in local)
        key = (campaign, number.kind, number.territory, number.timezones, caller, index, days)
        found = daily.get(key)
    if found is None:
        found = tuple(rule.check(ctx) for rule in _DAILY_RULES)
        if daily is not None:
            daily[key] = found
    return _walk(ctx, found)


def _walk(ctx: Context, found: _Found, walk: _Walk = _OUTCOME_WALK) -> tuple[Result, Reason]:
    """`outcome`'s walk of the rules, the findings of `walk`'s fixed rules given."""
    basis: Reason | None = None
    for _, check, passes, at in walk:
        if at >= 0:
            verdict, reason, _ = found[at]
        elif passes is not None and passes(ctx):
            continue
        else:
            verdict, reason, _ = check(ctx)
        if verdict is Outcome.PASS:
            continue
        if verdict is Outcome.DENY:
            assert reason is not None
            return Result.DENY, reason
        if verdict is Outcome.ALLOW:
            assert reason is not None
            return Result.ALLOW, reason
        basis = reason  # BASIS: later rules still apply
    assert basis is not None  # with facts read, the legal-basis rule denies or gives one
    return Result.ALLOW, basis


class Moment:
    """`outcome` for many calls of one campaign at one instant (a scrub: a million leads
    as of one instant): what depends on the number's kind alone (its local times, the
    version in force, the findings of the rules that need no facts, the hours included)
    is found once per kind, and each call only walks the rules that read its facts."""

    def __init__(self, campaign: Campaign, policy: Policy, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("the instant of a call must carry its time zone")
        # In UTC, as the facts' instants are: the rules compare the instant of the call
        # with a consent's or a withdrawal's, and two instants of one zone compare as
        # plain numbers where Paris against UTC costs a conversion each (~3 µs).
        self._campaign, self._policy, self._now = campaign, policy, now.astimezone(UTC)
        self._now_us = (self._now - _EPOCH) // timedelta(microseconds=1)
        days = min(v.consent_max_validity_days for v in policy.versions)
        self._shortest_validity_s = days * 86_400
        self._kinds: dict[tuple[Any, ...], tuple[Context, _Found]] = {}

    def _known(self, number: Number) -> tuple[Context, _Found]:
        kind = (number.kind, number.territory, number.timezones)
        known = self._kinds.get(kind)
        if known is None:
            local = _local_times(number, self._now, self._policy.default_timezone)
            index = self._policy.index_at(local[0].date())
            version, ref = self._policy.versions[index], self._policy._refs[index]
            ctx = Context(self._campaign, number, "", _NOT_READ_YET, self._now, version, local, ref)
            fixed = tuple(rule.check(ctx) for rule in _FACT_FREE_RULES)
            known = self._kinds[kind] = (ctx, fixed)
        return known

    def outcome(self, number: Number, facts: Facts) -> tuple[Result, Reason]:
        """`outcome(campaign, number, facts, now, policy)`, no caller ID."""
        ctx, found = self._known(number)
        # The context of a kind is reused: only its facts change (the rules above read
        # none; the caller-ID evidence they may set is the same for every call).
        ctx.facts = facts
        return _walk(ctx, found, _MOMENT_WALK)

    def consent_standing(
        self, number: Number, given_s: int, expires_s: int | None
    ) -> tuple[bool, bool]:
        """(given yet, expired) at this instant, for a number of this kind, of a consent
        given and expiring at these instants (whole seconds since 1970, UTC): all that
        `_consent_basis` reads of a consent when the facts hold no withdrawal and no
        registry listing (those it compares with the consent's own instants). So, with
        such facts, two consents of one standing get the same outcome: a scrub decides
        the leads with a consent of their own by it (tests/test_scrub_kept.py holds it)."""
        return self.standing_of(self.validity_s(number), given_s, expires_s)

    def validity_s(self, number: Number) -> int:
        """The longest a consent holds (s) for a number of this kind at this instant."""
        return self._known(number)[0].policy.consent_max_validity_days * 86_400

    def standing_of(
        self, validity_s: int, given_s: int, expires_s: int | None
    ) -> tuple[bool, bool]:
        """`consent_standing` with the kind's `validity_s` known (a scrub keeps it)."""
        now_us = self._now_us
        if given_s * 1_000_000 > now_us:
            return False, False
        end_s = given_s + validity_s
        if expires_s is not None and expires_s < end_s:
            end_s = expires_s
        return True, now_us >= end_s * 1_000_000

    def consent_holds(self, given_s: int, expires_s: int | None, until: datetime) -> bool:
        """Whether a consent given and expiring at these instants (as `consent_standing`)
        is given by this instant and not expired at any instant up to `until` included,
        under every version of the policy: then, with facts holding no withdrawal and no
        registry listing, the rules decide at each of those instants as they would with
        any other consent that holds as long (a scrub's callable_from, found by deciding
        at later instants, is then the same: tests/test_scrub_kept.py holds it)."""
        if given_s * 1_000_000 > self._now_us:
            return False
        end_s = given_s + self._shortest_validity_s
        if expires_s is not None and expires_s < end_s:
            end_s = expires_s
        return (until - _EPOCH) // timedelta(microseconds=1) < end_s * 1_000_000


# Reasons a change still waiting for Redis can give on its own.
PENDING_DENIALS = frozenset({Reason.INTERNAL_DNC, Reason.RECENT_REFUSAL, Reason.CONSENT_WITHDRAWN})


def decide_unavailable(
    campaign: Campaign,
    number: Number,
    known: Facts,
    unavailable: Unavailable,
    now: datetime,
    policy: Policy,
    caller: CallerId | None = None,
) -> Decision:
    """The decision when the store could not be read: what this node knows while Redis is
    away (`known`: changes journalled and not yet applied) still denies, even failing
    open (a do-not-call, a refusal, a withdrawal: deny-only, the rest is unknown); else
    the campaign's fail mode decides."""
    if known != _NO_FACTS:
        decision = decide(campaign, number, known, now, policy, caller=caller)
        withdrawn = decision.reason is Reason.NO_CONSENT and known.withdrawn_at is not None
        if decision.reason in PENDING_DENIALS or withdrawn:
            note = f"{unavailable.detail}; {decision.reason.value} pending in the journal"
            return replace(decision, degraded=note, unavailable=unavailable)
    return decide(campaign, number, unavailable, now, policy, caller=caller)


_NO_FACTS = Facts()


def _decision(
    ctx: Context,
    result: Result,
    reason: Reason,
    rules: list[RuleResult],
    degraded: str,
    counts_attempt: bool = False,
) -> Decision:
    facts = ctx.facts if isinstance(ctx.facts, Facts) else None
    unavailable = ctx.facts if isinstance(ctx.facts, Unavailable) else None
    evidence = _evidence(facts) if facts is not None else {}
    if ctx.caller_evidence is not None:
        evidence["caller_id"] = ctx.caller_evidence
    return Decision(
        result=result,
        reason=reason,
        rules=tuple(rules),
        evidence=evidence,
        number=ctx.number,
        local_time=ctx.local[0].isoformat(timespec="seconds") if ctx.number else "",
        policy=ctx.ref,
        degraded=degraded,
        counts_attempt=counts_attempt,
        attempts_30d=facts.attempts_30d if facts is not None else None,
        facts=facts,
        unavailable=unavailable,
    )


def _evidence(facts: Facts) -> dict[str, Any]:
    evidence: dict[str, Any] = {"attempts_30d": facts.attempts_30d}
    if facts.dnc is not None:
        evidence["dnc"] = {"reason": facts.dnc.reason, "added_at": _iso(facts.dnc.added_at)}
        if facts.dnc.list_version is not None:
            evidence["dnc"]["list_version"] = facts.dnc.list_version
        if facts.dnc.principal_only:
            evidence["dnc"]["principal_only"] = True
    if facts.optout is not None:
        evidence["optout"] = {
            "listed": facts.optout.listed,
            "checked_on": facts.optout.checked_on.isoformat(),
            "ref": facts.optout.ref,
        }
    if facts.consent is not None:
        evidence["consent"] = {
            "proof_ref": facts.consent.proof_ref,
            "given_at": _iso(facts.consent.given_at),
            "expires_at": _iso(facts.consent.expires_at),
        }
    if facts.withdrawn_at is not None:
        evidence["withdrawn_at"] = _iso(facts.withdrawn_at)
    if facts.contracts:
        evidence["contracts"] = [
            {
                "id": c.contract_id,
                "sector": c.sector.value,
                "start": c.start.isoformat(),
                "end": c.end.isoformat() if c.end else None,
            }
            for c in facts.contracts
        ]
    if facts.refused_at is not None:
        evidence["refused_at"] = _iso(facts.refused_at)
    return evidence


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None


def _local_times(number: Number | None, now: datetime, default_zone: str) -> tuple[datetime, ...]:
    zones = number.timezones if number is not None and number.timezones else ()
    if len(zones) < 2:  # the common case, without a generator
        return (now.astimezone(_zone(zones[0] if zones else default_zone)),)
    return tuple(now.astimezone(_zone(z)) for z in zones)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def holiday_name(policy: Version, territory: str, day: date) -> str:
    """The public holiday on `day` for a callee in `territory`, or ""."""
    local_days = policy.local_days.get(territory, ())
    calendar = _holidays_for(policy.holidays_national, policy.holidays_local, local_days, day.year)
    return calendar.get(day, "")


@lru_cache(maxsize=256)
def _holidays_for(
    national: bool, local: bool, local_days: tuple[str, ...], year: int
) -> dict[date, str]:
    days: dict[date, str] = {}
    if national:
        days.update(holidays.country_holidays("FR", years=year))
    if local:
        for spec in local_days:
            if spec == "good_friday":
                days.setdefault(easter(year) - timedelta(days=2), "Good Friday (local)")
            else:
                month, day = (int(part) for part in spec.split("-"))
                days.setdefault(date(year, month, day), f"local holiday {spec}")
    return days
