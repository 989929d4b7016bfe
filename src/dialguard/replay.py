"""Replay: decide past calls again, from the facts their audit records hold, under another
policy, and count what would change. How a compliance officer tries a policy change (a new
decree, a stricter internal rule) on real traffic before it ships.

Pure: records in, a report out (`dialguard audit replay` reads the journal and writes the
one `replay` record). Each decision record carries a snapshot of what the rules read
(dialguard.snapshot): the facts, the campaign's settings, the caller ID and its
authorisation. Replaying a record under the policy that decided it gives back its decision
exactly; a record made before snapshots is counted as not replayable.

Replay is first-order: each call is judged with the attempt count it had. A call the new
policy denies would not have been counted, so later calls to that number could have found
a lower count; replay does not simulate that (a stricter cap can only let later calls
through that the report shows denied, never the reverse).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import orjson

from dialguard import policy as rules
from dialguard import snapshot
from dialguard.audit.reader import Query
from dialguard.callerids import Authorisation, CallerIds
from dialguard.model import (
    CallerId,
    Campaign,
    Decision,
    Facts,
    FailMode,
    Purpose,
    Sector,
)
from dialguard.numbers import InvalidNumber, Number, normalise
from dialguard.policy import Policy

__all__ = ["Report", "decisions", "redecide", "replay"]

EXAMPLES_PER_CHANGE = 3
_NUMBER_CACHE = 1 << 16


@dataclass
class Report:
    records: int = 0  # decision records read
    replayed: int = 0
    not_replayable: int = 0
    unchanged: int = 0
    newly_denied: int = 0
    newly_allowed: int = 0
    reason_changed: int = 0  # same result, another reason
    changes: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    by_campaign: dict[str, Counter[str]] = field(default_factory=dict)
    by_day: dict[str, Counter[str]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: Report) -> None:
        """Add `other`'s counts (another process's share of the records) to these."""
        for name in (
            "records", "replayed", "not_replayable", "unchanged", "newly_denied",
            "newly_allowed", "reason_changed",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.changes.update(other.changes)
        for mine, theirs in ((self.by_campaign, other.by_campaign), (self.by_day, other.by_day)):
            for key, counter in theirs.items():
                mine.setdefault(key, Counter()).update(counter)
        examples = sorted([*self.examples, *other.examples], key=lambda e: (e["ts"], e["id"]))
        kept: Counter[tuple[str, str, str, str]] = Counter()
        self.examples = []
        for example in examples:
            change = (*example["from"].values(), *example["to"].values())
            kept[change] += 1
            if kept[change] <= EXAMPLES_PER_CHANGE:
                self.examples.append(example)

    @property
    def changed(self) -> int:
        return self.newly_denied + self.newly_allowed + self.reason_changed

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "replayed": self.replayed,
            "not_replayable": self.not_replayable,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "newly_denied": self.newly_denied,
            "newly_allowed": self.newly_allowed,
            "reason_changed": self.reason_changed,
            "by_change": [
                {"from": f"{a} {b}", "to": f"{c} {d}", "decisions": n}
                for (a, b, c, d), n in self.changes.most_common()
            ],
            "by_campaign": [
                {"campaign": name, **_counts(c)} for name, c in sorted(self.by_campaign.items())
            ],
            "by_day": [{"day": day, **_counts(c)} for day, c in sorted(self.by_day.items())],
            "examples": self.examples,
        }


def _counts(counter: Counter[str]) -> dict[str, int]:
    return {
        "newly_denied": counter["newly_denied"],
        "newly_allowed": counter["newly_allowed"],
        "reason_changed": counter["reason_changed"],
    }


_DECISION = b'"kind":"decision"'
# A decision record's rules and their explanations (most of its bytes), which replay
# reads only for an invalid number: the list between these two keys (decision_record
# writes them in this order). Both hold unescaped quotes, which JSON allows only around
# keys and values: found, they are the keys, not text inside a value.
_RULES = b',"rules":['
_AFTER_RULES = b'],"number_raw":'


def decisions(lines: Iterable[bytes], query: Query) -> Iterator[dict[str, Any]]:
    """The decision records of journal `lines` that `query` matches, parsed without their
    `rules` (whole when replay needs them: an invalid number, another layout)."""
    filtered = query != Query(kind=query.kind)  # dates, a campaign: else the kind alone
    for line in lines:
        if line.find(_DECISION, 0, 200) < 0:
            record = _parse(line)  # another kind, or a record without one
            if record is None or record.get("kind", "decision") != "decision":
                continue
        else:
            start = line.find(_RULES, 0, 300)
            end = line.find(_AFTER_RULES, start) if start >= 0 else -1
            record = _parse(line[:start] + line[end + 1 :]) if end >= 0 else None
            if record is None or not isinstance(record.get("number"), str):
                record = _parse(line)
                if record is None:
                    continue
        if query.matches(record) if filtered else isinstance(record.get("ts"), int):
            yield record


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def replay(
    records: Iterable[dict[str, Any]], policy: Policy, day_of: Callable[[int], date]
) -> Report:
    """Decide every decision record of `records` again under `policy`. `day_of`: the day
    (in the reader's zone) a record's `ts` falls on, for the report by day."""
    report = Report()
    numbers: dict[str, Number | None] = {}
    campaigns: dict[tuple[Any, ...], Campaign] = {}
    daily: dict[tuple[Any, ...], Any] = {}
    for record in records:
        if record.get("kind", "decision") != "decision":
            continue
        report.records += 1
        was = (str(record.get("result")), str(record.get("reason")))
        decision = None
        try:
            quick = _outcome(record, policy, numbers, campaigns, daily)
            if quick is not None and quick != was:
                # A change: the whole decision, for the report's example (the authority).
                decision = redecide(record, policy, numbers, campaigns)
        except (ValueError, KeyError, TypeError, IndexError):
            quick = None
        if quick is None:
            report.not_replayable += 1
            continue
        report.replayed += 1
        if decision is None:
            report.unchanged += 1
            continue
        now = (decision.result.value, decision.reason.value)
        if was == now:
            report.unchanged += 1
            continue
        if was[0] != now[0]:
            kind = "newly_denied" if now[0] == "DENY" else "newly_allowed"
        else:
            kind = "reason_changed"
        setattr(report, kind, getattr(report, kind) + 1)
        change = (*was, *now)
        report.changes[change] += 1
        campaign = str(record.get("campaign"))
        report.by_campaign.setdefault(campaign, Counter())[kind] += 1
        day = day_of(int(record["ts"])).isoformat()
        report.by_day.setdefault(day, Counter())[kind] += 1
        if report.changes[change] <= EXAMPLES_PER_CHANGE:
            deciding = decision.rules[-1]
            report.examples.append(
                {
                    "id": record.get("id"),
                    "ts": record.get("ts"),
                    "local_time": record.get("local_time"),
                    "number": record.get("number"),
                    "campaign": campaign,
                    "from": {"result": was[0], "reason": was[1]},
                    "to": {"result": now[0], "reason": now[1]},
                    "rule": deciding.rule,
                    "detail": deciding.detail,
                    "version": decision.policy.version,
                }
            )
    return report


def redecide(
    record: dict[str, Any],
    policy: Policy,
    numbers: dict[str, Number | None] | None = None,
    campaigns: dict[tuple[Any, ...], Campaign] | None = None,
) -> Decision | None:
    """The decision `policy` takes for the call of `record`; None when the record has no
    facts snapshot (made before them)."""
    snap = record.get("facts")
    if not isinstance(snap, dict):
        return None
    facts, unavailable = snapshot.decode(snap)
    now = datetime.fromtimestamp(int(record["ts"]) / 1000, UTC)
    number, number_error = _number(record, {} if numbers is None else numbers)
    campaign = _campaign(record, snap, {} if campaigns is None else campaigns)
    if campaign is None or number is None or number.never_blocked:
        return rules.decide(campaign, number, Facts(), now, policy, number_error)
    caller = None
    if campaign.checks_caller_id:
        caller = CallerId(str(record.get("callerid") or ""), bool(snap.get("pres")))
    if unavailable is not None:
        return rules.decide_unavailable(campaign, number, facts, unavailable, now, policy, caller)
    return rules.decide(campaign, number, facts, now, policy, caller=caller)


def _outcome(
    record: dict[str, Any],
    policy: Policy,
    numbers: dict[str, Number | None],
    campaigns: dict[tuple[Any, ...], Campaign],
    daily: dict[tuple[Any, ...], Any],
) -> tuple[str, str] | None:
    """(result, reason) of `redecide(record, ...)`, the common case by `policy.outcome`
    (none of the decision's explanations); None when the record is not replayable."""
    snap = record.get("facts")
    if not isinstance(snap, dict):
        return None
    number = campaign = None
    if "un" not in snap and isinstance(record.get("number"), str):
        number, _ = _number(record, numbers)
        campaign = _campaign(record, snap, campaigns)
    if campaign is None or number is None or number.never_blocked:
        decision = redecide(record, policy, numbers, campaigns)  # the rare cases, whole
        return None if decision is None else (decision.result.value, decision.reason.value)
    facts, _ = snapshot.decode(snap)
    now = datetime.fromtimestamp(int(record["ts"]) / 1000, UTC)
    caller = None
    if campaign.checks_caller_id:
        caller = CallerId(str(record.get("callerid") or ""), bool(snap.get("pres")))
    # StrEnum members: equal to the strings of the record they are compared with.
    return rules.outcome(campaign, number, facts, now, policy, caller, daily)


def _number(record: dict[str, Any], cache: dict[str, Number | None]) -> tuple[Number | None, str]:
    e164 = record.get("number")
    if not isinstance(e164, str):
        # INVALID_NUMBER: the rule said why, and says it again whatever the policy.
        return None, str(record["rules"][-1]["detail"])
    if e164 in cache:
        number = cache[e164]
    else:
        if len(cache) >= _NUMBER_CACHE:
            cache.clear()
        try:
            number = normalise(e164)
        except InvalidNumber:
            number = None
        cache[e164] = number
    if number is None:
        raise ValueError(f"recorded number {e164!r} does not normalise")
    return number, ""


def _campaign(
    record: dict[str, Any], snap: dict[str, Any], cache: dict[tuple[Any, ...], Campaign]
) -> Campaign | None:
    principal = record.get("principal")
    if principal is None:
        return None  # UNKNOWN_CAMPAIGN, whatever the policy
    fail_mode, honour_dnc, automated, has_list = snap["c"]
    key = (record.get("campaign"), principal, record["purpose"], record["sector"], *snap["c"])
    campaign = cache.get(key)
    if campaign is None:
        campaign = cache[key] = Campaign(
            name=str(record.get("campaign")),
            principal=str(principal),
            purpose=Purpose(record["purpose"]),
            sector=Sector(record["sector"]),
            fail_mode=FailMode(fail_mode),
            honour_dnc=bool(honour_dnc),
            automated=bool(automated),
            caller_ids=CallerIds(()) if has_list else None,
        )
    if has_list:
        # The authorisation as it stood (the configuration's, not the policy's): the one
        # entry that held, or one that did not hold on that day, or none.
        evidence = (record.get("evidence") or {}).get("caller_id") or {}
        presented = evidence.get("number")
        if isinstance(presented, str) and "authorised" in evidence:
            digits = presented.lstrip("+")
            value = int(digits)
            never = None if evidence["authorised"] else date.max
            if evidence["authorised"] or "ref" in evidence:
                entry = Authorisation(
                    value, value, len(digits), presented, str(evidence.get("ref", "")), never
                )
                campaign = replace(campaign, caller_ids=CallerIds((entry,)))
    return campaign
