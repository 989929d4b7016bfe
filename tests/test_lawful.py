"""`callable_from`: when a denied call becomes lawful by itself (a scrub's report).

A table of one case or more for every reason, with the instant a person works out from
the rules (the shipped policy: weekdays 10:00-13:00 and 14:00-20:00 in the callee's zone,
national and local holidays, a 60-day refusal block, 4 attempts in 30 days), then a
property: whatever the facts and the policy, the instant given is lawful and none before
it is.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard import policy as rules
from dialguard.config import load_policy
from dialguard.lawful import TIME_LIFTS, callable_from, next_window
from dialguard.model import (
    Campaign,
    Consent,
    DncEntry,
    Facts,
    OptoutResult,
    Purpose,
    Reason,
    Result,
    Sector,
)
from dialguard.numbers import Kind, Number, normalise
from dialguard.policy import Policy
from tests.test_replay_outcome import campaigns, facts, policies

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = load_policy(ROOT / "config" / "policy" / "france.toml")
PARIS = ZoneInfo("Europe/Paris")
CAMPAIGN = Campaign("c", "ACME", Purpose.PROSPECTING, Sector.GENERAL)
ENERGY = Campaign("e", "ACME", Purpose.PROSPECTING, Sector.ENERGY_RENOVATION)
DIALER = Campaign("d", "ACME", Purpose.PROSPECTING, Sector.GENERAL, automated=True)
MOBILE = "0612345678"


def paris(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


def ms(text: str) -> int:
    return int(paris(text).timestamp() * 1000)


def consented(now: str, **changes: object) -> Facts:
    """Facts of a number whose consent, given 30 days before, holds."""
    given_at = paris(now) - timedelta(days=30)
    return replace(Facts(consent=Consent(given_at, None, "crm:1")), **changes)  # type: ignore[arg-type]


FOUR = [
    ms("2026-11-10T11:00"),
    ms("2026-11-12T12:00"),
    ms("2026-11-20T15:00"),
    ms("2026-12-01T16:00"),
]

# (case, number, campaign, facts, attempts (ms) or None, now (Paris), reason at now,
#  callable_from (ISO with offset) or None)
CASES: list[tuple[str, str, Campaign, Facts, list[int] | None, str, Reason, str | None]] = [
    ("allowed now", MOBILE, CAMPAIGN, consented("2026-12-07T10:30"), None,
     "2026-12-07T10:30", Reason.CONSENT, "2026-12-07T10:30:00+01:00"),
    # OUTSIDE_HOURS: the next window, in the callee's zone.
    ("before the morning window", MOBILE, CAMPAIGN, consented("2026-12-07T08:00"), None,
     "2026-12-07T08:00", Reason.OUTSIDE_HOURS, "2026-12-07T10:00:00+01:00"),
    ("lunch break", MOBILE, CAMPAIGN, consented("2026-12-07T13:30"), None,
     "2026-12-07T13:30", Reason.OUTSIDE_HOURS, "2026-12-07T14:00:00+01:00"),
    ("friday evening: monday", MOBILE, CAMPAIGN, consented("2026-12-11T20:30"), None,
     "2026-12-11T20:30", Reason.OUTSIDE_HOURS, "2026-12-14T10:00:00+01:00"),
    ("saturday: monday", MOBILE, CAMPAIGN, consented("2026-12-12T11:00"), None,
     "2026-12-12T11:00", Reason.OUTSIDE_HOURS, "2026-12-14T10:00:00+01:00"),
    ("saturday before summer time and easter monday: tuesday, at +02:00", MOBILE, CAMPAIGN,
     consented("2027-03-27T11:00"), None,
     "2027-03-27T11:00", Reason.OUTSIDE_HOURS, "2027-03-30T10:00:00+02:00"),
    ("réunion at 13:30 there: its 14:00", "0692123456", CAMPAIGN,
     consented("2026-12-07T10:30"), None,
     "2026-12-07T10:30", Reason.OUTSIDE_HOURS, "2026-12-07T14:00:00+04:00"),
    ("martinique at 05:30 there: its 10:00", "0696123456", CAMPAIGN,
     consented("2026-12-07T10:30"), None,
     "2026-12-07T10:30", Reason.OUTSIDE_HOURS, "2026-12-07T10:00:00-04:00"),
    ("consent expires before the next window", MOBILE, CAMPAIGN,
     consented("2026-12-11T20:30", consent=Consent(paris("2026-12-01T12:00"),
                                                   paris("2026-12-12T12:00"), "crm:2")),
     None, "2026-12-11T20:30", Reason.OUTSIDE_HOURS, None),
    # HOLIDAY: the next window of a calling day that is no holiday.
    ("christmas, then saturday 26 (a local holiday too): monday", MOBILE, CAMPAIGN,
     consented("2026-12-25T11:00"), None,
     "2026-12-25T11:00", Reason.HOLIDAY, "2026-12-28T10:00:00+01:00"),
    ("new year's day, a friday: monday", MOBILE, CAMPAIGN, consented("2027-01-01T11:00"),
     None, "2027-01-01T11:00", Reason.HOLIDAY, "2027-01-04T10:00:00+01:00"),
    ("easter monday: tuesday", MOBILE, CAMPAIGN, consented("2027-03-29T11:00"), None,
     "2027-03-29T11:00", Reason.HOLIDAY, "2027-03-30T10:00:00+02:00"),
    # RECENT_REFUSAL: the first window on or after the day the block ends.
    ("refused on 2026-11-20: blocked to 2027-01-19, callable wednesday 20", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", refused_at=paris("2026-11-20T15:00")), None,
     "2026-12-07T10:30", Reason.RECENT_REFUSAL, "2027-01-20T10:00:00+01:00"),
    ("a block ending on a friday: monday", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", refused_at=paris("2026-11-23T15:00")), None,
     "2026-12-07T10:30", Reason.RECENT_REFUSAL, "2027-01-25T10:00:00+01:00"),
    ("refused and withdrawn (outcome refused): never by itself", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", refused_at=paris("2026-11-20T15:00"),
               withdrawn_at=paris("2026-11-20T15:00")), None,
     "2026-12-07T10:30", Reason.RECENT_REFUSAL, None),
    # FREQUENCY_CAP: when the oldest attempt leaves the 30 days.
    ("4 attempts: the oldest's 30 days end thursday 11:00", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", attempts_30d=4), FOUR,
     "2026-12-07T10:30", Reason.FREQUENCY_CAP, "2026-12-10T11:00:00+01:00"),
    ("5 attempts: the second oldest's", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", attempts_30d=5),
     [ms("2026-11-10T11:00"), ms("2026-11-11T11:00"), *FOUR[2:], ms("2026-11-25T11:00")],
     "2026-12-07T10:30", Reason.FREQUENCY_CAP, "2026-12-11T11:00:00+01:00"),
    ("a slot freeing at 19:59:30.250: the second after", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", attempts_30d=4),
     [ms("2026-11-10T19:59:30.250"), *FOUR[1:]],
     "2026-12-07T10:30", Reason.FREQUENCY_CAP, "2026-12-10T19:59:31+01:00"),
    ("a slot freeing on a saturday: monday", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", attempts_30d=4),
     [ms("2026-11-12T11:00"), ms("2026-11-13T11:00"), *FOUR[2:]],
     "2026-12-07T10:30", Reason.FREQUENCY_CAP, "2026-12-14T10:00:00+01:00"),
    ("at the cap, instants not read", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", attempts_30d=4), None,
     "2026-12-07T10:30", Reason.FREQUENCY_CAP, None),
    # Policy versions: the opt-out regime ends on 2026-08-11.
    ("opt-out regime, friday night: monday still under it", MOBILE, CAMPAIGN,
     Facts(optout=OptoutResult(False, date(2026, 8, 1), "b:1")), None,
     "2026-08-07T21:00", Reason.OUTSIDE_HOURS, "2026-08-10T10:00:00+02:00"),
    ("opt-out regime, monday night: the consent regime comes first", MOBILE, CAMPAIGN,
     Facts(optout=OptoutResult(False, date(2026, 8, 1), "b:1")), None,
     "2026-08-10T20:30", Reason.OUTSIDE_HOURS, None),
    # Reasons time never lifts.
    ("do-not-call", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", dnc=DncEntry("asked", None, "1")), None,
     "2026-12-07T10:30", Reason.INTERNAL_DNC, None),
    ("no consent", MOBILE, CAMPAIGN, Facts(), None,
     "2026-12-07T10:30", Reason.NO_CONSENT, None),
    ("consent withdrawn", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", withdrawn_at=paris("2026-12-01T10:00")), None,
     "2026-12-07T10:30", Reason.CONSENT_WITHDRAWN, None),
    ("consent expired", MOBILE, CAMPAIGN,
     Facts(consent=Consent(paris("2025-11-01T10:00"), None, "crm:3")), None,
     "2026-12-07T10:30", Reason.CONSENT_EXPIRED, None),
    ("registry listing not superseded", MOBILE, CAMPAIGN,
     consented("2026-12-07T10:30", optout=OptoutResult(True, date(2026, 11, 30), "b:2")), None,
     "2026-12-07T10:30", Reason.OPTOUT_LISTED, None),
    ("opt-out regime, never checked", MOBILE, CAMPAIGN, Facts(), None,
     "2026-07-01T10:30", Reason.OPTOUT_UNVERIFIED, None),
    ("sector ban", MOBILE, ENERGY, consented("2026-12-07T10:30"), None,
     "2026-12-07T10:30", Reason.SECTOR_BAN, None),
    ("caller-ID rule, no caller ID", MOBILE, DIALER, consented("2026-12-07T10:30"), None,
     "2026-12-07T10:30", Reason.CALLER_ID_MISSING, None),
]  # fmt: skip


def facts_at(
    known: Facts, attempts: list[int] | None, moment: datetime, policy: Policy, number: Number
) -> Facts:
    """The facts at `moment`: the attempts then in the window (the store's count)."""
    if attempts is None:
        return known
    zone = ZoneInfo((number.timezones or (policy.default_timezone,))[0])
    window_ms = policy.at(moment.astimezone(zone).date()).window_days * 86_400_000
    start = int(moment.timestamp() * 1000) - window_ms
    return replace(known, attempts_30d=sum(1 for at in attempts if at > start))


@pytest.mark.parametrize(
    ("number", "campaign", "known", "attempts", "now", "reason", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_callable_from(
    number: str,
    campaign: Campaign,
    known: Facts,
    attempts: list[int] | None,
    now: str,
    reason: Reason,
    expected: str | None,
) -> None:
    callee = normalise(number)
    moment = paris(now)
    decision = rules.decide(campaign, callee, known, moment, SHIPPED)
    assert decision.reason is reason  # the case is the one it says
    found = callable_from(campaign, callee, known, moment, SHIPPED, attempts)
    if expected is None:
        assert found is None
        return
    assert found == datetime.fromisoformat(expected)
    lawful = rules.decide(campaign, callee, facts_at(known, attempts, found, SHIPPED, callee),
                          found, SHIPPED)  # fmt: skip
    assert lawful.result is Result.ALLOW
    if found > moment:  # and a second earlier it was not
        before = found - timedelta(seconds=1)
        earlier = facts_at(known, attempts, before, SHIPPED, callee)
        assert rules.decide(campaign, callee, earlier, before, SHIPPED).result is Result.DENY


def test_every_reason_time_lifts_has_a_case_with_an_answer() -> None:
    answered = {case[6] for case in CASES if case[7] is not None}
    assert answered >= TIME_LIFTS


def test_a_number_in_two_zones_waits_for_a_window_open_in_both() -> None:
    # Paris 10:00-13:00 is Martinique 05:00-08:00; 14:00-15:00 is 09:00-10:00: the first
    # instant inside both is 15:00 in Paris, 10:00 in Martinique.
    both = Number("x", "+1", Kind.FOREIGN, "FR", ("Europe/Paris", "America/Martinique"))
    found = next_window(both, paris("2026-12-07T10:30"), SHIPPED)
    assert found == paris("2026-12-07T15:00")


def test_a_policy_without_a_calling_day_gives_no_answer() -> None:
    never = SHIPPED.with_values(days=frozenset())
    callee = normalise(MOBILE)
    now = paris("2026-12-07T10:30")
    assert rules.decide(CAMPAIGN, callee, consented("2026-12-07T10:30"), now, never).reason is (
        Reason.OUTSIDE_HOURS
    )
    assert callable_from(CAMPAIGN, callee, consented("2026-12-07T10:30"), now, never) is None


def test_the_instant_must_carry_its_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        callable_from(CAMPAIGN, normalise(MOBILE), Facts(), datetime(2026, 12, 7), SHIPPED)


# --- the property: the answer is lawful, and nothing before it is ----------------------

NUMBERS = ["0612345678", "0147000000", "0262123456", "0692073782", "0596123456", "0899123456"]
START = datetime(2026, 7, 20, tzinfo=PARIS)  # over the regime change of 2026-08-11
nows = st.builds(
    lambda day, minute: START + timedelta(days=day, minutes=minute),
    st.integers(0, 200),
    st.integers(0, 24 * 60 - 1),
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Campaign, Number, Facts, list[int], datetime, Policy]:
    now = draw(nows)
    policy = draw(policies())
    number = normalise(draw(st.sampled_from(NUMBERS)))
    known = draw(facts(now))
    # Attempts of the last 40 days (ms), counted as the store counts them at `now`.
    attempts = [
        int((now - timedelta(minutes=m)).timestamp() * 1000)
        for m in draw(st.lists(st.integers(1, 40 * 24 * 60), max_size=7))
    ]
    known = facts_at(known, attempts, now, policy, number)
    return draw(campaigns), number, known, attempts, now, policy


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=6))
def test_the_answer_is_lawful_and_nothing_before_it(
    case: tuple[Campaign, Number, Facts, list[int], datetime, Policy], points: list[float]
) -> None:
    campaign, number, known, attempts, now, policy = case
    decision = rules.decide(campaign, number, known, now, policy)
    found = callable_from(campaign, number, known, now, policy, attempts)
    if decision.allowed:
        assert found == now
        return
    if decision.reason not in TIME_LIFTS:
        assert found is None
        return
    if found is None:
        return
    assert found > now
    at_found = facts_at(known, attempts, found, policy, number)
    assert rules.decide(campaign, number, at_found, found, policy).allowed
    span = (found - now) // timedelta(microseconds=1)
    start = now.astimezone(UTC)  # wall-clock arithmetic in Paris would skip the DST hour
    for offset in [*(min(int(span * p), span - 1) for p in points), max(span - 10**6, 0)]:
        moment = start + timedelta(microseconds=offset)
        earlier = facts_at(known, attempts, moment, policy, number)
        assert not rules.decide(campaign, number, earlier, moment, policy).allowed, moment


def test_callable_from_is_in_utc_whole_seconds_past_now() -> None:
    found = callable_from(CAMPAIGN, normalise(MOBILE), consented("2026-12-07T08:00"),
                          paris("2026-12-07T08:00:00.5"), SHIPPED)  # fmt: skip
    assert found is not None
    assert found.tzinfo is UTC
    assert found.astimezone(PARIS).time() == time(10, 0)
