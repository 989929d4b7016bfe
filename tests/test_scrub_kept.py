"""The verdicts a scrub keeps and gives to other leads are those each lead gets afresh.

A lead whose one entry of its own is an imported consent takes the verdict kept for its
kind, its other entries and its consent's standing (given yet, expired: policy.Moment);
one that time lifts (outside hours, say) takes the one kept for another lead whose
consent held until its callable_from, when its own consent holds that long too. Both
are held here to a judge that keeps nothing, lead by lead, over consents drawn around
every instant the rules compare them with (given now, expiring now, before and after
the next window, at the policy's longest validity).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard.model import Campaign
from dialguard.numbers import Number
from dialguard.pending import Pending
from dialguard.policy import Policy
from dialguard.scrub import Judge, Verdict, _decide, _Waiting
from dialguard.store.bulk import NOTHING, split_times
from dialguard.store.facts import Decoder, ListsInForce
from dialguard.store.packed import pack_consent
from tests.test_replay_outcome import campaigns, policies
from tests.test_scrub import nows

CELLS = ["0612345678", "0692123456", "0596123456", "0147000000", "0590123456"]
LISTS = ListsInForce("1", {"2": {"version": "2", "checked_on": "2026-07-01", "ref": "r"}})


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@st.composite
def consents(draw: st.DrawFn, now: datetime, policy: Policy) -> bytes:
    """A packed consent given and expiring around the instants the rules compare."""
    validity = timedelta(days=min(v.consent_max_validity_days for v in policy.versions))
    near = [now, now - validity, now + timedelta(hours=draw(st.integers(1, 72)))]
    around = draw(st.sampled_from(near))
    given = around - timedelta(seconds=draw(st.integers(-7200, 7200)))
    if draw(st.booleans()):
        given = now - timedelta(days=draw(st.integers(0, 800)), seconds=draw(st.integers(0, 86399)))
    expires = 0
    if draw(st.booleans()):
        # Before or after the next window (a night, a weekend, a holiday away).
        later = now + timedelta(hours=draw(st.integers(1, 100)))
        target = draw(st.sampled_from([now, given + validity, later, later]))
        expires = _ms(target + timedelta(seconds=draw(st.integers(-7200, 7200))))
    return pack_consent(_ms(given), max(expires, 0), f"p{draw(st.integers(0, 9))}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), nows, campaigns, policies())
def test_kept_verdicts_are_those_decided_afresh(
    data: st.DataObject, now: datetime, campaign: Campaign, policy: Policy
) -> None:
    judge = Judge(campaign, policy, now)
    batch: list[tuple[bytes, str, Number | None, Verdict | None]] = []
    entries: list[Any] = []
    # A kind or two, few other entries: leads that share what the judge keeps.
    cells = data.draw(st.lists(st.sampled_from(CELLS), min_size=1, max_size=2))
    for _ in range(data.draw(st.integers(1, 60))):
        found = judge.number(data.draw(st.sampled_from(cells)))
        assert not isinstance(found, Verdict)
        key, kind, _ = found
        dnc = data.draw(st.sampled_from([None, None, None, b"I|asked"]))
        optout = data.draw(st.sampled_from([None, None, b"2|C", b"2|L"]))
        consent = data.draw(st.one_of(st.none(), consents(now, policy)))
        # At a cap or over it, the reply brings the attempts' instants: a lead's own, so
        # two leads of one count may have different ones (and callable_from).
        attempts = data.draw(st.integers(0, judge.min_cap + 1))
        batch.append((b"row", key, kind, None))
        drawn: list[Any] = [dnc, optout, consent, None, None, None, attempts, None, None]
        if attempts >= judge.min_cap:
            step = data.draw(st.sampled_from([1, 2, 9])) * 86_400_000
            last = int(now.timestamp() * 1000) - data.draw(st.sampled_from([1, 5])) * 3_600_000
            drawn.append([str(last - step * i).encode() for i in range(attempts)])
        # As the scan's reply has it: nil for a number with nothing.
        entries.append(None if tuple(drawn) == NOTHING else drawn)
    waiting = _Waiting(Pending(None, None), frozenset())  # type: ignore[arg-type]

    replies = [None if e is None else list(e) for e in entries]  # _decide takes them
    verdicts = _decide(batch, entries, LISTS, judge, Decoder(), waiting)
    for (_, _, lead_kind, _), reply, verdict in zip(batch, replies, verdicts, strict=True):
        assert lead_kind is not None
        afresh = Judge(campaign, policy, now)
        entry, times = (NOTHING, None) if reply is None else split_times(reply)
        facts = Decoder().facts(entry, LISTS)
        assert not isinstance(facts, Exception)
        assert verdict == afresh.decide(lead_kind, facts, times), entry
