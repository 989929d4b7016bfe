"""When a denied call becomes lawful by itself: the `callable_from` of a scrubbed lead.

Pure: the facts, the attempts' instants and the instant asked about are arguments; nothing
reads a clock or a store. The answer is found by the rules themselves (`policy.outcome`):
from the instant of the denial, move to the first instant the deciding rule could let the
call through, and decide again there, until the call is allowed (that instant is the
answer) or a rule denies that time alone does not lift (no answer). So a refusal block
that ends on a Sunday gives the Monday's first window, a slot that frees at 03:00 the
morning's first window, and a consent that expires before the next window nothing.

What time lifts, and where to look next:

- OUTSIDE_HOURS, HOLIDAY: the start of the next calling window on a calling day that is
  not a public holiday, in every zone the number may be in (the version in force on each
  day: a new version's hours count from its date);
- RECENT_REFUSAL: midnight (callee-local) of the day after the block's last day;
- FREQUENCY_CAP: the instant enough attempts leave the window for one slot to be free
  (an attempt made at T stops counting at T + window, as the store counts it);
- and for any of them, the first day of a later policy version (whose hours, block or
  cap may differ).

Everything else (do-not-call, registry, consent, sector ban, an invalid number, the
caller-ID rules) is never lifted by time alone: no answer. The facts are taken as they
stand (no new call, consent or refusal meanwhile); the attempts are those of the window
at the instant asked about, and a later policy version's cap and window apply to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dialguard.model import Campaign, Facts, Reason, Result
from dialguard.numbers import Number
from dialguard.policy import Policy, Version, holiday_name, outcome

__all__ = ["HORIZON_DAYS", "TIME_LIFTS", "callable_from", "next_window"]

# The reasons that time alone lifts.
TIME_LIFTS = frozenset(
    {Reason.OUTSIDE_HOURS, Reason.HOLIDAY, Reason.RECENT_REFUSAL, Reason.FREQUENCY_CAP}
)
# How far ahead an answer is looked for. The longest wait the shipped policy can give is a
# refusal block (60 days) followed by a full window of attempts (30): a year is plenty,
# and a policy without any calling day gives no answer rather than a search without end.
HORIZON_DAYS = 400
# Each step moves past one denial (the end of a block, a slot, a window); a handful is
# the most a real case needs (block -> night -> holiday -> weekend -> slot -> ...).
MAX_STEPS = 48

_DAY_MS = 86_400_000


def callable_from(
    campaign: Campaign,
    number: Number,
    facts: Facts,
    now: datetime,
    policy: Policy,
    attempts_ms: Sequence[int] | None = None,
    daily: dict[tuple[Any, ...], Any] | None = None,
) -> datetime | None:
    """The first instant at or after `now` at which a call to `number` for `campaign` is
    lawful, or None when time alone never makes it so (or not within HORIZON_DAYS).

    `attempts_ms`: the instants (ms) of the attempts counted in `facts.attempts_30d`; None
    when they were not read: the count then stays as it is, which is exact as long as it
    is below every version's cap (a count at a cap gives no answer without them).
    `daily`: `policy.outcome`'s cache, kept by a caller that asks about many numbers.
    """
    if now.tzinfo is None:
        raise ValueError("the instant must carry its time zone")
    moment = now.astimezone(UTC)
    limit = moment + timedelta(days=HORIZON_DAYS)
    ordered = sorted(attempts_ms) if attempts_ms is not None else None
    for _ in range(MAX_STEPS):
        at_moment = _facts_at(facts, ordered, moment, policy, number)
        result, reason = outcome(campaign, number, at_moment, moment, policy, None, daily)
        if result is Result.ALLOW:
            return moment
        if reason not in TIME_LIFTS:
            return None
        later = _lifted(reason, number, at_moment, ordered, moment, policy)
        # A new policy version may lift it sooner (a higher cap, a shorter block).
        change = _next_version(number, moment, policy)
        if change is not None and (later is None or change < later):
            later = change
        if later is None or later <= moment or later > limit:
            return None
        moment = later
    return None


def _facts_at(
    facts: Facts, ordered: list[int] | None, moment: datetime, policy: Policy, number: Number
) -> Facts:
    """`facts` at `moment`: the attempts still in the window then."""
    if ordered is None:
        return facts
    window_ms = _version(policy, number, moment).window_days * _DAY_MS
    start = _ms(moment) - window_ms
    count = sum(1 for at in ordered if at > start)  # the store counts (start, +inf)
    return facts if count == facts.attempts_30d else replace(facts, attempts_30d=count)


def _lifted(
    reason: Reason,
    number: Number,
    facts: Facts,
    ordered: list[int] | None,
    moment: datetime,
    policy: Policy,
) -> datetime | None:
    """The first instant after `moment` that `reason` could no longer deny the call."""
    if reason is Reason.OUTSIDE_HOURS or reason is Reason.HOLIDAY:
        return next_window(number, moment, policy)
    version = _version(policy, number, moment)
    if reason is Reason.RECENT_REFUSAL:
        refused_at = facts.refused_at
        assert refused_at is not None  # the rule denied on it
        zone = _zone(_zones(number, policy)[0])
        refusal_day = refused_at.astimezone(zone).date()
        first_free = refusal_day + timedelta(days=version.refusal_block_days + 1)
        return _midnight(first_free, zone)
    # FREQUENCY_CAP: the oldest attempts leave the window until one slot is free.
    if ordered is None:
        return None
    window_ms = version.window_days * _DAY_MS
    start = _ms(moment) - window_ms
    counted = [at for at in ordered if at > start]
    excess = len(counted) - version.max_attempts  # >= 0: the rule denied
    if excess < 0:
        return None
    return _second_at_or_after(counted[excess] + window_ms)


def next_window(number: Number, moment: datetime, policy: Policy) -> datetime | None:
    """The first instant at or after `moment` inside a calling window of a calling day
    that is no public holiday, in every zone `number` may be in; None within HORIZON_DAYS."""
    zones = [_zone(name) for name in _zones(number, policy)]
    candidate = moment.astimezone(UTC)
    for _ in range(MAX_STEPS):
        starts = [_next_window_in(zone, number.territory, candidate, policy) for zone in zones]
        if any(start is None for start in starts):
            return None
        latest = max(start for start in starts if start is not None)
        if latest == candidate:
            return candidate
        candidate = latest
    return None


def _next_window_in(
    zone: ZoneInfo, territory: str, moment: datetime, policy: Policy
) -> datetime | None:
    first_day = moment.astimezone(zone).date()
    for offset in range(HORIZON_DAYS + 1):
        day = first_day + timedelta(days=offset)
        version = policy.at(day)
        if day.weekday() not in version.days or holiday_name(version, territory, day):
            continue
        for start, end in sorted(version.windows):
            # Compared in UTC: two instants of one zone compare by wall clock otherwise.
            ends = datetime.combine(day, end, zone).astimezone(UTC)
            if ends <= moment:
                continue
            return max(datetime.combine(day, start, zone).astimezone(UTC), moment)
    return None


def _zones(number: Number, policy: Policy) -> tuple[str, ...]:
    # As the rules place a call: the number's zones, else the policy's.
    return number.timezones or (policy.default_timezone,)


def _version(policy: Policy, number: Number, moment: datetime) -> Version:
    # The version in force on the call's date in its first zone, as `policy.prepare` picks.
    return policy.at(moment.astimezone(_zone(_zones(number, policy)[0])).date())


def _next_version(number: Number, moment: datetime, policy: Policy) -> datetime | None:
    """The start of the first policy version after `moment` (callee-local midnight)."""
    zone = _zone(_zones(number, policy)[0])
    today = moment.astimezone(zone).date()
    for version in policy.versions:
        if version.effective_from > today:
            return _midnight(version.effective_from, zone)
    return None


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)  # ZoneInfo keeps one instance per name


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)  # as the store counts (store.facts.ms)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _second_at_or_after(ms: int) -> datetime:
    # A whole second: its milliseconds are exact whichever way they are computed (a
    # float timestamp of 10:31:12.345 may come back as ...344, still in the cap).
    return _EPOCH + timedelta(seconds=-(-ms // 1000))
