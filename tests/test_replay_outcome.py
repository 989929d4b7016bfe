"""Replay's quick path gives exactly the result and reason `policy.decide` gives.

`audit replay` decides a million calls with `policy.outcome` (the rules without their
explanations, the day's fact-free findings kept) and reads each record without its
`rules`. Any difference would make a replay report a change that is none, or miss one:
here random calls are decided and recorded as the service records them, then decided
again both ways under random policies, through the journal's bytes.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard import policy as rules
from dialguard.audit.reader import Query
from dialguard.audit.writer import decision_record
from dialguard.callerids import CallerIds, parse_entry
from dialguard.config import load_policy
from dialguard.model import (
    CallerId,
    CallRequest,
    Campaign,
    Consent,
    Contract,
    DncEntry,
    Facts,
    FailMode,
    OptoutResult,
    Purpose,
    Reason,
    Sector,
    Unavailable,
)
from dialguard.numbers import normalise
from dialguard.policy import Policy
from dialguard.replay import _outcome, decisions, redecide

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = load_policy(ROOT / "config" / "policy" / "france.toml")
PARIS = ZoneInfo("Europe/Paris")

# Mobiles, landlines, overseas (other zones), special-rate, foreign, short, emergency,
# and a number that does not normalise.
NUMBERS = [
    "0612345678", "0147000000", "0262123456", "0692073782", "0590123456", "0594123456",
    "0596123456", "0899123456", "0800123456", "+4915112345678", "3949", "112", "12ab",
]  # fmt: skip
CALLERS = ["0948120042", "0147000000", "0162000000", "0612345678", "unknown", "", "3949"]
CALLER_IDS = CallerIds(
    (
        parse_entry("09 48 12 00 00..09 48 12 09 99", "assignment A"),
        parse_entry("01 62 00 00 00", "assignment B", valid_until=date(2026, 6, 30)),
        parse_entry("01 47 00 00 00", "assignment C", valid_from=date(2027, 1, 1)),
    )
)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True once in `n` draws (hypothesis draws small integers far more often)."""
    return st.sampled_from([False] * (n - 1) + [True])


START = datetime(2026, 7, 20, tzinfo=PARIS)  # over the regime change of 2026-08-11
# Mostly in the daytime, when the rules after the hours rule get their say.
moments = st.builds(
    lambda day, minute: START + timedelta(days=day, minutes=minute),
    st.integers(0, 180),
    st.one_of(st.integers(9 * 60, 21 * 60), st.integers(0, 24 * 60 - 1)),
)
before = st.integers(0, 500 * 24 * 60).map(lambda m: timedelta(minutes=m))

campaigns = st.builds(
    Campaign,
    name=st.just("c"),
    principal=st.just("ACME"),
    purpose=st.sampled_from([Purpose.PROSPECTING] * 4 + list(Purpose)),
    sector=st.sampled_from([Sector.GENERAL] * 4 + list(Sector)),
    fail_mode=st.sampled_from(list(FailMode)),
    honour_dnc=st.booleans(),
    automated=one_in(3),
    caller_ids=st.sampled_from([None, None, None, CALLER_IDS, CallerIds(())]),
)


@st.composite
def facts(draw: st.DrawFn, now: datetime) -> Facts:
    def ago() -> datetime:
        return now - draw(before)

    def maybe(value: Any) -> Any:
        return value if draw(one_in(4)) else None

    contracts = draw(
        st.lists(
            st.builds(
                Contract,
                st.just("k1"),
                st.sampled_from(list(Sector)),
                st.just(now.date() - timedelta(days=draw(st.integers(-5, 400)))),
                st.sampled_from([None, now.date(), now.date() - timedelta(days=1)]),
            ),
            max_size=2,
        )
    )
    consent = None
    if not draw(one_in(5)):
        consent = Consent(ago(), maybe(now + draw(before) - draw(before)), "crm:1")
    return Facts(
        dnc=maybe(DncEntry("asked", maybe(ago()), maybe("v1"))),
        optout=maybe(OptoutResult(draw(st.booleans()), ago().date(), "bloctel:1")),
        consent=consent,
        withdrawn_at=maybe(ago()),
        contracts=tuple(contracts),
        refused_at=maybe(ago()),
        attempts_30d=draw(st.integers(0, 6)),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    changes: dict[str, Any] = {}
    if draw(st.booleans()):
        changes["max_attempts"] = draw(st.integers(1, 6))
    if draw(st.booleans()):
        changes["windows"] = draw(
            st.sampled_from(
                [((time(9), time(19)),), ((time(10), time(13)), (time(14), time(19, 30)))]
            )
        )
    if draw(st.booleans()):
        changes["days"] = frozenset(draw(st.sets(st.integers(0, 6), min_size=1)))
    if draw(st.booleans()):
        changes["refusal_enabled"] = draw(st.booleans())
        changes["refusal_block_days"] = draw(st.integers(0, 90))
    if draw(st.booleans()):
        changes["sector_bans"] = {draw(st.sampled_from(list(Sector))): date(2026, 9, 1)}
    if draw(st.booleans()):
        changes["consent_max_validity_days"] = draw(st.integers(30, 1200))
    if draw(st.booleans()):
        changes["holidays_national"] = draw(st.booleans())
    if draw(st.booleans()):
        changes["caller_id_verified_prefixes"] = draw(st.sampled_from([(), ("0948",)]))
    return SHIPPED.with_values(**changes) if changes else SHIPPED


# A few campaigns and two days (the second a holiday): journals whose calls share the
# findings of a day.
POOL = [
    Campaign("a", "ACME", Purpose.PROSPECTING, Sector.GENERAL),
    Campaign("b", "ACME", Purpose.PROSPECTING, Sector.GENERAL, automated=True),
    Campaign("c", "ACME", Purpose.PROSPECTING, Sector.GENERAL, caller_ids=CALLER_IDS),
    Campaign("d", "ACME", Purpose.PRESS, Sector.GENERAL, honour_dnc=False),
]
two_days = st.builds(
    lambda day, minute: datetime(2026, 12, 31, tzinfo=PARIS) + timedelta(days=day, minutes=minute),
    st.integers(0, 1),
    st.integers(8 * 60, 21 * 60),
)


@st.composite
def calls(
    draw: st.DrawFn,
    moments: st.SearchStrategy[datetime] = moments,
    campaigns: st.SearchStrategy[Campaign] = campaigns,
) -> tuple[dict[str, Any], bytes]:
    """A call decided under the shipped policy and recorded as the service records it:
    the record, and its journal line."""
    now = draw(moments)
    campaign: Campaign | None = draw(campaigns)
    assert campaign is not None
    raw = draw(st.sampled_from(NUMBERS[:3] * 4 + NUMBERS))
    callerid = draw(st.sampled_from(CALLERS[:1] * 6 + CALLERS))
    pres = draw(st.sampled_from(["", "0"] * 4 + ["1", "32"]))
    request = CallRequest(raw, campaign.name, "Local/x", "1.1", callerid, "test", pres)
    caller = CallerId.of(request) if campaign.checks_caller_id else None
    try:
        number, error = normalise(raw), ""
    except ValueError as exc:
        number, error = None, str(exc)
    known = draw(facts(now))
    down = draw(one_in(10))
    if draw(one_in(20)):  # a campaign not in the configuration
        decision = rules.decide(None, number, Facts(), now, SHIPPED, error)
        campaign = None
    elif number is None:
        decision = rules.decide(campaign, None, Facts(), now, SHIPPED, error)
    elif down:
        gone = Unavailable(Reason.STORE_UNAVAILABLE, "redis down")
        pending = known if draw(st.booleans()) else Facts()
        decision = rules.decide_unavailable(campaign, number, pending, gone, now, SHIPPED, caller)
    else:
        decision = rules.decide(campaign, number, known, now, SHIPPED, caller=caller)
    record = decision_record(
        decision_id="x", ts=now, node="n", request=request, campaign=campaign,
        decision=decision, latency_us=1,
    )  # fmt: skip
    return record, orjson.dumps(record)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(calls(), calls(two_days, st.sampled_from(POOL))), min_size=1, max_size=12),
    policies(),
)
def test_the_quick_path_is_decide(
    journal: list[tuple[dict[str, Any], bytes]], policy: Policy
) -> None:
    # One set of caches for the whole journal, as replay keeps them: what a record leaves
    # there must not decide another.
    numbers: dict[str, Any] = {}
    campaigns: dict[tuple[Any, ...], Campaign] = {}
    daily: dict[tuple[Any, ...], Any] = {}
    for again in (False, True):
        for record, line in journal:
            (read,) = decisions([line], Query(kind="decision"))
            if read.get("number") is not None:
                assert "rules" not in read  # read without them
            full = redecide(record, policy)
            assert full is not None
            quick = _outcome(read, policy, numbers, campaigns, daily)
            assert quick == (full.result.value, full.reason.value), again


def test_same_policy_the_quick_path_gives_back_every_recorded_decision() -> None:
    @settings(max_examples=500, deadline=None)
    @given(calls())
    def check(call: tuple[dict[str, Any], bytes]) -> None:
        record, line = call
        (read,) = decisions([line], Query(kind="decision"))
        assert _outcome(read, SHIPPED, {}, {}, {}) == (record["result"], record["reason"])

    check()


def test_the_rules_walked_are_the_table() -> None:
    # A rule added to the table is walked by `outcome` too, at its place.
    assert [name for name, *_ in rules._OUTCOME_WALK] == [r.name for r in rules.RULES]
    assert set(rules._PASSES) <= {r.name for r in rules.RULES if r.needs_facts}
