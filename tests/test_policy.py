"""Table-driven tests of the French rules: every rule, every reason code, every boundary."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dialguard import policy
from dialguard.config import load_policy
from dialguard.model import (
    Campaign,
    Consent,
    Contract,
    Decision,
    DncEntry,
    Facts,
    FailMode,
    OptoutResult,
    Outcome,
    Purpose,
    Reason,
    Result,
    Sector,
    Unavailable,
)
from dialguard.numbers import normalise

POLICY = load_policy(Path(__file__).parent.parent / "config" / "policy" / "france.toml")
PARIS = ZoneInfo("Europe/Paris")


def paris(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


def campaign(
    purpose: Purpose = Purpose.PROSPECTING,
    sector: Sector = Sector.GENERAL,
    fail_mode: FailMode = FailMode.CLOSED,
    honour_dnc: bool = True,
) -> Campaign:
    return Campaign("test", "ACME", purpose, sector, fail_mode, "", honour_dnc)


PRESS = Campaign("press", "ACME", Purpose.PRESS, Sector.GENERAL)

# A Monday that is no holiday anywhere in France, inside the morning window.
MONDAY = "2026-11-30T11:00"
CONSENT = Consent(paris("2026-10-01T12:00"), None, "proof-1")
CLEAR_OPTOUT = OptoutResult(listed=False, checked_on=date(2026, 5, 20), ref="req-9")


def decide(
    when: datetime | str = MONDAY,
    facts: Facts | Unavailable | None = None,
    camp: Campaign | None = None,
    number: str = "0612345678",
    rules: policy.Policy = POLICY,
) -> Decision:
    moment = paris(when) if isinstance(when, str) else when
    return policy.decide(
        camp if camp is not None else campaign(),
        normalise(number),
        Facts(consent=CONSENT) if facts is None else facts,
        moment,
        rules,
    )


# --- one row per reason code --------------------------------------------------------------

D = Result.DENY
A = Result.ALLOW
ENERGY_CONTRACT = Contract("K-1", Sector.ENERGY_RENOVATION, date(2025, 1, 1), None)

REASONS = [
    # id, when, facts, campaign, number, result, reason
    ("consent", MONDAY, Facts(consent=CONSENT), campaign(), "0612345678", A, Reason.CONSENT),
    (
        "contract",
        MONDAY,
        Facts(contracts=(replace(ENERGY_CONTRACT, sector=Sector.GENERAL),)),
        campaign(),
        "0612345678",
        A,
        Reason.CONTRACT,
    ),
    ("press", MONDAY, Facts(), campaign(Purpose.PRESS), "0612345678", A, Reason.PRESS),
    (
        "non-commercial",
        "2026-11-29T22:00",  # a Sunday night: not a sales call, the sales rules do not bind
        Facts(),
        campaign(Purpose.NON_COMMERCIAL),
        "0612345678",
        A,
        Reason.NON_COMMERCIAL,
    ),
    ("service", MONDAY, Facts(), campaign(Purpose.SERVICE), "0612345678", A, Reason.SERVICE),
    ("out-of-scope", MONDAY, Facts(), campaign(), "0812345678", A, Reason.OUT_OF_SCOPE),
    ("emergency", "2026-11-29T03:00", Facts(), campaign(), "112", A, Reason.EMERGENCY),
    (
        "optout-clear",
        "2026-06-01T11:00",
        Facts(optout=CLEAR_OPTOUT),
        campaign(),
        "0612345678",
        A,
        Reason.OPTOUT_CLEAR,
    ),
    (
        "internal-dnc",
        MONDAY,
        Facts(dnc=DncEntry("asked", None), consent=CONSENT),
        campaign(),
        "0612345678",
        D,
        Reason.INTERNAL_DNC,
    ),
    (
        "optout-listed",
        "2026-06-01T11:00",
        Facts(optout=replace(CLEAR_OPTOUT, listed=True)),
        campaign(),
        "0612345678",
        D,
        Reason.OPTOUT_LISTED,
    ),
    (
        "optout-unverified",
        "2026-06-01T11:00",
        Facts(),
        campaign(),
        "0612345678",
        D,
        Reason.OPTOUT_UNVERIFIED,
    ),
    ("no-consent", MONDAY, Facts(), campaign(), "0612345678", D, Reason.NO_CONSENT),
    (
        "consent-expired",
        MONDAY,
        Facts(consent=replace(CONSENT, expires_at=paris("2026-11-01T00:00"))),
        campaign(),
        "0612345678",
        D,
        Reason.CONSENT_EXPIRED,
    ),
    (
        "consent-withdrawn",
        MONDAY,
        Facts(consent=CONSENT, withdrawn_at=paris("2026-11-02T09:00")),
        campaign(),
        "0612345678",
        D,
        Reason.CONSENT_WITHDRAWN,
    ),
    (
        "sector-ban",
        MONDAY,
        Facts(consent=CONSENT),
        campaign(sector=Sector.ENERGY_RENOVATION),
        "0612345678",
        D,
        Reason.SECTOR_BAN,
    ),
    (
        "recent-refusal",
        MONDAY,
        Facts(consent=CONSENT, refused_at=paris("2026-11-20T11:00")),
        campaign(),
        "0612345678",
        D,
        Reason.RECENT_REFUSAL,
    ),
    ("outside-hours", "2026-11-30T08:00", None, campaign(), "0612345678", D, Reason.OUTSIDE_HOURS),
    ("holiday", "2026-12-25T11:00", None, campaign(), "0612345678", D, Reason.HOLIDAY),
    (
        "frequency-cap",
        MONDAY,
        Facts(consent=CONSENT, attempts_30d=4),
        campaign(),
        "0612345678",
        D,
        Reason.FREQUENCY_CAP,
    ),
    (
        "store-unavailable",
        MONDAY,
        Unavailable(Reason.STORE_UNAVAILABLE, "Redis down"),
        campaign(),
        "0612345678",
        D,
        Reason.STORE_UNAVAILABLE,
    ),
    (
        "deadline",
        MONDAY,
        Unavailable(Reason.DEADLINE, "300 ms passed"),
        campaign(),
        "0612345678",
        D,
        Reason.DEADLINE,
    ),
]


@pytest.mark.parametrize(
    ("when", "facts", "camp", "number", "result", "reason"),
    [row[1:] for row in REASONS],
    ids=[row[0] for row in REASONS],
)
def test_each_reason(
    when: str,
    facts: Facts | Unavailable | None,
    camp: Campaign,
    number: str,
    result: Result,
    reason: Reason,
) -> None:
    decision = decide(when, facts, camp, number)
    assert (decision.result, decision.reason) == (result, reason)
    # The deciding rule is the last one listed, and it names the reason.
    assert decision.rules[-1].reason in (reason, None)


def test_every_reason_code_has_a_row() -> None:
    from tests.test_caller_id import CASES  # the caller-ID rule's own table

    covered = {row[-1] for row in REASONS} | {Reason.INVALID_NUMBER, Reason.UNKNOWN_CAMPAIGN}
    covered |= {row[-2] for row in CASES if row[-2] is not None}
    assert covered == set(Reason)


def test_unknown_campaign_and_invalid_number() -> None:
    unknown = policy.decide(None, normalise("0612345678"), Facts(), paris(MONDAY), POLICY)
    assert (unknown.result, unknown.reason) == (D, Reason.UNKNOWN_CAMPAIGN)
    invalid = policy.decide(campaign(), None, Facts(), paris(MONDAY), POLICY, "'abc' is not...")
    assert (invalid.result, invalid.reason) == (D, Reason.INVALID_NUMBER)
    assert invalid.rules[-1].detail == "'abc' is not..."
    # Emergency numbers pass even without a known campaign.
    emergency = policy.decide(None, normalise("15"), Facts(), paris(MONDAY), POLICY)
    assert (emergency.result, emergency.reason) == (A, Reason.EMERGENCY)


def test_a_decision_lists_every_rule_it_evaluated_with_sources() -> None:
    decision = decide()
    assert [r.rule for r in decision.rules] == [rule.name for rule in policy.RULES]
    assert all(rule.source for rule in policy.RULES)
    assert decision.policy.name == "france" and len(decision.policy.hash) == 16
    assert decision.local_time == "2026-11-30T11:00:00+01:00"
    assert decision.counts_attempt
    assert decision.evidence["consent"]["proof_ref"] == "proof-1"


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError):
        policy.decide(campaign(), normalise("0612345678"), Facts(), datetime(2026, 11, 30), POLICY)


# --- regimes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "facts", "reason"),
    [
        # Last day of the opt-out regime: a fresh "not listed" result is enough.
        (
            "2026-08-10T11:00",
            Facts(optout=replace(CLEAR_OPTOUT, checked_on=date(2026, 8, 1))),
            Reason.OPTOUT_CLEAR,
        ),
        # First day of the consent regime: the same facts are no longer enough.
        (
            "2026-08-11T11:00",
            Facts(optout=replace(CLEAR_OPTOUT, checked_on=date(2026, 8, 1))),
            Reason.NO_CONSENT,
        ),
        ("2026-08-11T11:00", Facts(consent=CONSENT), Reason.NO_CONSENT),  # consent given later
        (
            "2026-08-11T11:00",
            Facts(consent=replace(CONSENT, given_at=paris("2026-08-01T10:00"))),
            Reason.CONSENT,
        ),
        # A consent does not help in the opt-out regime: the registry is the test there.
        (
            "2026-08-10T11:00",
            Facts(consent=replace(CONSENT, given_at=paris("2026-08-01T10:00"))),
            Reason.OPTOUT_UNVERIFIED,
        ),
    ],
)
def test_regime_switch_on_2026_08_11(when: str, facts: Facts, reason: Reason) -> None:
    assert decide(when, facts).reason is reason


# --- boundaries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "allowed"),
    [
        ("09:59", False),
        ("10:00", True),
        ("12:59", True),
        ("13:00", False),
        ("13:59", False),
        ("14:00", True),
        ("19:59", True),
        ("20:00", False),
        ("23:30", False),
        ("00:00", False),
    ],
)
def test_calling_hours(clock: str, allowed: bool) -> None:
    decision = decide(f"2026-11-30T{clock}")
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason is Reason.OUTSIDE_HOURS


@pytest.mark.parametrize(
    ("day", "allowed"),
    [
        ("2026-11-30", True),  # Monday
        ("2026-12-04", True),  # Friday
        ("2026-12-05", False),  # Saturday
        ("2026-12-06", False),  # Sunday
    ],
)
def test_weekdays_only(day: str, allowed: bool) -> None:
    assert decide(f"{day}T11:00").allowed is allowed


@pytest.mark.parametrize(
    ("age_days", "reason"),
    [
        (0, Reason.OPTOUT_CLEAR),
        (29, Reason.OPTOUT_CLEAR),  # the 30th day of validity
        (30, Reason.OPTOUT_UNVERIFIED),  # the 31st day: stale
        (90, Reason.OPTOUT_UNVERIFIED),
        (-1, Reason.OPTOUT_UNVERIFIED),  # a check made after the call proves nothing
    ],
)
def test_optout_freshness(age_days: int, reason: Reason) -> None:
    checked = date(2026, 6, 1) - timedelta(days=age_days)
    facts = Facts(optout=replace(CLEAR_OPTOUT, checked_on=checked))
    assert decide("2026-06-01T11:00", facts).reason is reason


def test_a_listed_number_stays_listed_however_old_the_check() -> None:
    facts = Facts(optout=OptoutResult(True, date(2025, 1, 1), "old"))
    assert decide("2026-06-01T11:00", facts).reason is Reason.OPTOUT_LISTED


@pytest.mark.parametrize(
    ("attempts", "reason"),
    [
        (0, Reason.CONSENT),
        (3, Reason.CONSENT),
        (4, Reason.FREQUENCY_CAP),
        (9, Reason.FREQUENCY_CAP),
    ],
)
def test_frequency_cap_fourth_and_fifth_attempt(attempts: int, reason: Reason) -> None:
    assert decide(facts=Facts(consent=CONSENT, attempts_30d=attempts)).reason is reason


@pytest.mark.parametrize(
    ("when", "camp", "number", "counts"),
    [
        (MONDAY, campaign(), "0612345678", True),
        (MONDAY, campaign(Purpose.PRESS), "0612345678", True),
        (MONDAY, campaign(sector=Sector.CPF), "0612345678", True),  # a contract may lift it
        (MONDAY, campaign(Purpose.SERVICE), "0612345678", False),
        (MONDAY, campaign(Purpose.NON_COMMERCIAL), "0612345678", False),
        (MONDAY, campaign(), "0812345678", False),  # out of scope
        (MONDAY, campaign(), "112", False),
        ("2026-11-30T20:00", campaign(), "0612345678", False),
        ("2026-12-25T11:00", campaign(), "0612345678", False),
    ],
)
def test_would_count_matches_what_the_fact_free_rules_say(
    when: str, camp: Campaign, number: str, counts: bool
) -> None:
    assert policy.would_count(camp, normalise(number), paris(when), POLICY) is counts
    assert policy.would_count(None, normalise(number), paris(when), POLICY) is False
    assert policy.would_count(camp, None, paris(when), POLICY) is False
    # Whatever the facts, a call that counts is one would_count let through.
    for facts in (Facts(consent=CONSENT), Facts(contracts=(ENERGY_CONTRACT,)), Facts()):
        decision = decide(when, facts, camp, number)
        assert not decision.counts_attempt or counts


@pytest.mark.parametrize(
    ("expires_at", "reason"),
    [
        ("2026-11-30T00:00", Reason.CONSENT_EXPIRED),  # expiring today: no longer holds
        ("2026-11-30T10:59", Reason.CONSENT_EXPIRED),
        ("2026-11-30T11:01", Reason.CONSENT),
        ("2026-12-01T00:00", Reason.CONSENT),  # expiring tomorrow: still holds today
    ],
)
def test_consent_expiring_today(expires_at: str, reason: Reason) -> None:
    facts = Facts(consent=replace(CONSENT, expires_at=paris(expires_at)))
    assert decide(facts=facts).reason is reason


def test_consent_lasts_at_most_the_policy_maximum() -> None:
    given = paris("2025-11-30T10:00")  # 365 days before MONDAY 10:00
    assert decide(facts=Facts(consent=Consent(given, None, "p"))).reason is Reason.CONSENT_EXPIRED
    later = Consent(given + timedelta(hours=2), None, "p")
    assert decide(facts=Facts(consent=later)).reason is Reason.CONSENT
    far = Consent(given, paris("2030-01-01T00:00"), "p")
    assert decide(facts=Facts(consent=far)).reason is Reason.CONSENT_EXPIRED


def test_a_new_consent_after_a_withdrawal_holds() -> None:
    facts = Facts(consent=CONSENT, withdrawn_at=paris("2026-09-01T10:00"))
    assert decide(facts=facts).reason is Reason.CONSENT


def test_consent_regime_registry_listing_needs_a_later_consent() -> None:
    listed = OptoutResult(True, date(2026, 7, 1), "req-1")
    before = Facts(consent=replace(CONSENT, given_at=paris("2026-06-15T10:00")), optout=listed)
    after = Facts(consent=CONSENT, optout=listed)  # given 2026-10-01
    assert decide(facts=before).reason is Reason.OPTOUT_LISTED
    assert decide(facts=after).reason is Reason.CONSENT
    relaxed = POLICY.with_values(optout_suppress_in_consent_regime=False)
    assert decide(facts=before, rules=relaxed).reason is Reason.CONSENT


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        ("2026-10-01T19:00", Reason.RECENT_REFUSAL),  # day 60 after the refusal day
        ("2026-09-30T19:00", Reason.CONSENT),  # day 61: the block is over
        ("2026-11-30T10:30", Reason.RECENT_REFUSAL),  # the same day
    ],
)
def test_refusal_blocks_sixty_full_days(refused: str, reason: Reason) -> None:
    facts = Facts(consent=CONSENT, refused_at=paris(refused))
    assert decide(facts=facts).reason is reason


def test_refusal_rule_can_be_switched_off() -> None:
    facts = Facts(consent=CONSENT, refused_at=paris("2026-11-20T10:00"))
    assert decide(facts=facts, rules=POLICY.with_values(refusal_enabled=False)).allowed


# --- sectors and contracts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sector", "contracts", "when", "reason"),
    [
        (Sector.ENERGY_RENOVATION, (), MONDAY, Reason.SECTOR_BAN),
        (Sector.ENERGY_RENOVATION, (ENERGY_CONTRACT,), MONDAY, Reason.CONTRACT),
        # An ended contract does not count, nor one for another object.
        (
            Sector.ENERGY_RENOVATION,
            (replace(ENERGY_CONTRACT, end=date(2026, 11, 29)),),
            MONDAY,
            Reason.SECTOR_BAN,
        ),
        (
            Sector.ENERGY_RENOVATION,
            (replace(ENERGY_CONTRACT, end=date(2026, 11, 30)),),
            MONDAY,
            Reason.CONTRACT,
        ),
        (
            Sector.ENERGY_RENOVATION,
            (replace(ENERGY_CONTRACT, start=date(2026, 12, 1)),),
            MONDAY,
            Reason.SECTOR_BAN,
        ),
        (
            Sector.ENERGY_RENOVATION,
            (replace(ENERGY_CONTRACT, sector=Sector.CPF),),
            MONDAY,
            Reason.SECTOR_BAN,
        ),
        (Sector.CPF, (), MONDAY, Reason.SECTOR_BAN),
        (Sector.HOME_ADAPTATION, (), MONDAY, Reason.SECTOR_BAN),
        # Before the ban on CPF calls (2022-12-19), the registry test applied.
        (Sector.CPF, (), "2022-12-16T11:00", Reason.OPTOUT_UNVERIFIED),
        (Sector.CPF, (), "2022-12-19T11:00", Reason.SECTOR_BAN),
    ],
)
def test_sector_bans(
    sector: Sector, contracts: tuple[Contract, ...], when: str, reason: Reason
) -> None:
    facts = Facts(consent=CONSENT, contracts=contracts)
    assert decide(when, facts, campaign(sector=sector)).reason is reason


def test_a_contract_is_a_basis_but_hours_and_cap_still_apply() -> None:
    facts = Facts(contracts=(replace(ENERGY_CONTRACT, sector=Sector.GENERAL),), attempts_30d=4)
    assert decide(facts=facts).reason is Reason.FREQUENCY_CAP
    assert decide("2026-11-30T21:00", replace(facts, attempts_30d=0)).reason is Reason.OUTSIDE_HOURS


def test_press_is_exempt_from_consent_but_not_from_hours_cap_or_dnc() -> None:
    press = campaign(Purpose.PRESS)
    assert decide(MONDAY, Facts(), press).reason is Reason.PRESS
    assert decide("2026-11-30T20:00", Facts(), press).reason is Reason.OUTSIDE_HOURS
    assert decide(MONDAY, Facts(attempts_30d=4), press).reason is Reason.FREQUENCY_CAP
    assert decide(MONDAY, Facts(dnc=DncEntry("x", None)), press).reason is Reason.INTERNAL_DNC


def test_non_commercial_honours_the_company_list_unless_configured_not_to() -> None:
    survey = campaign(Purpose.NON_COMMERCIAL)
    listed = Facts(dnc=DncEntry("asked", None))
    assert decide(MONDAY, listed, survey).reason is Reason.INTERNAL_DNC
    assert decide(MONDAY, listed, replace(survey, honour_dnc=False)).reason is Reason.NON_COMMERCIAL


# --- holidays -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "day",
    [
        "2026-01-01",
        "2026-04-06",  # Easter Monday
        "2026-05-01",
        "2026-05-08",
        "2026-05-14",  # Ascension
        "2026-05-25",  # Whit Monday
        "2026-07-14",
        "2027-11-01",
        "2026-11-11",
        "2026-12-25",
        "2028-08-15",
    ],
)
def test_national_holidays(day: str) -> None:
    # A press campaign needs no consent in either regime, so only the calendar decides.
    decision = decide(f"{day}T11:00", Facts(), PRESS)
    assert decision.reason is Reason.HOLIDAY, decision.rules[-1]


def test_alsace_moselle_days_block_metropolitan_numbers_by_default() -> None:
    assert decide("2026-04-03T11:00", Facts(), PRESS).reason is Reason.HOLIDAY  # Good Friday
    assert decide("2025-12-26T11:00", Facts(), PRESS).reason is Reason.HOLIDAY  # a Friday
    no_local = POLICY.with_values(holidays_local=False)
    assert decide("2026-04-03T11:00", Facts(), PRESS, rules=no_local).allowed
    assert decide("2026-12-25T11:00", Facts(), PRESS, rules=no_local).reason is Reason.HOLIDAY


def _weekday_in_or_after(year: int, month_day: str) -> datetime:
    month, day = (int(p) for p in month_day.split("-"))
    while date(year, month, day).weekday() >= 5:
        year += 1
    return datetime(year, month, day, 11, 0)


# Each overseas department: a number, its zone's UTC offset in November, its local holiday.
OVERSEAS = [
    ("RE", "0262123456", 4, "12-20"),
    ("RE", "0692123456", 4, "12-20"),
    ("YT", "0269612345", 3, "04-27"),
    ("YT", "0639012345", 3, "04-27"),
    ("GP", "0590123456", -4, "05-27"),
    ("GP", "0690123456", -4, "10-09"),  # Saint-Barthélemy shares +590
    ("MQ", "0596123456", -4, "05-22"),
    ("MQ", "0696123456", -4, "05-22"),
    ("GF", "0594123456", -3, "06-10"),
    ("GF", "0694123456", -3, "06-10"),
    ("PM", "+508411234", -3, ""),
]


@pytest.mark.parametrize(("territory", "number", "offset", "holiday"), OVERSEAS)
def test_overseas_hours_in_the_callee_time_zone(
    territory: str, number: str, offset: int, holiday: str
) -> None:
    assert normalise(number).territory == territory
    # 10:00 local on Monday 2026-11-30 is 10:00 - offset in UTC.
    opening = datetime(2026, 11, 30, 10, 0, tzinfo=UTC) - timedelta(hours=offset)
    assert decide(opening, number=number).allowed
    early = decide(opening - timedelta(minutes=1), number=number)
    assert early.reason is Reason.OUTSIDE_HOURS
    assert early.local_time.startswith("2026-11-30T09:59")
    closing = opening + timedelta(hours=10)  # 20:00 local
    assert decide(closing - timedelta(minutes=1), number=number).allowed
    assert decide(closing, number=number).reason is Reason.OUTSIDE_HOURS


@pytest.mark.parametrize(("territory", "number", "offset", "holiday"), OVERSEAS[:-1])
def test_overseas_local_holidays(territory: str, number: str, offset: int, holiday: str) -> None:
    local = _weekday_in_or_after(2026, holiday)
    zone = normalise(number).timezones[0]
    moment = local.replace(tzinfo=ZoneInfo(zone))
    assert decide(moment, Facts(), PRESS, number=number).reason is Reason.HOLIDAY
    # The same day is an ordinary day in Paris.
    paris_same = datetime.combine(local.date(), time(11), PARIS)
    assert decide(paris_same, Facts(), PRESS).allowed


def test_the_0262_trap_is_a_holiday_and_zone_question_too() -> None:
    # 2028-12-20 is a Wednesday: Réunion's abolition day, not a metropolitan holiday.
    moment = datetime(2028, 12, 20, 11, 0, tzinfo=ZoneInfo("Indian/Reunion"))
    consent = Facts(consent=Consent(moment - timedelta(days=10), None, "p"))
    for spelling in ("0262123456", "+262262123456", "+33262123456"):
        assert decide(moment, consent, number=spelling).reason is Reason.HOLIDAY


# --- fail modes ---------------------------------------------------------------------------


def test_fail_open_still_applies_what_needs_no_facts() -> None:
    down = Unavailable(Reason.STORE_UNAVAILABLE, "Redis down")
    open_campaign = campaign(fail_mode=FailMode.OPEN)
    decision = decide(MONDAY, down, open_campaign)
    assert (decision.result, decision.reason) == (A, Reason.STORE_UNAVAILABLE)
    assert "failing open" in decision.degraded
    assert not decision.evidence
    skipped = [r.rule for r in decision.rules if r.outcome is Outcome.SKIPPED]
    assert skipped == ["internal_dnc", "recent_refusal", "legal_basis", "frequency"]
    assert decide("2026-11-30T21:00", down, open_campaign).reason is Reason.OUTSIDE_HOURS
    banned = replace(open_campaign, sector=Sector.CPF)
    # A banned sector stays banned: its only exception, a contract, cannot be checked.
    assert decide(MONDAY, down, banned).reason is Reason.SECTOR_BAN
    assert decide(MONDAY, down, campaign(Purpose.SERVICE, fail_mode=FailMode.OPEN)).allowed


def test_fail_closed_denies_and_says_why() -> None:
    decision = decide(MONDAY, Unavailable(Reason.DEADLINE, "no decision within 300 ms"))
    assert (decision.result, decision.reason) == (D, Reason.DEADLINE)
    assert "failing closed" in decision.degraded
    # Nothing needing facts is ever denied for want of them when the call is an emergency.
    assert decide(MONDAY, Unavailable(Reason.DEADLINE, "x"), number="112").allowed


def test_docs_list_every_reason_and_rule() -> None:
    text = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    assert {reason.value for reason in Reason if f"`{reason.value}`" not in text} == set()
    assert {rule.name for rule in policy.RULES if f"`{rule.name}`" not in text} == set()
