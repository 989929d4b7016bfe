"""`audit stats` from the rollup counters: what the console's charts read, never the
records themselves. The same figures as `dialguard.audit.reader.stats` over the same
records, for ranges on whole hours (a day in any zone used is one)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from dialguard.central.store import CentralStore, hour_of

__all__ = ["NotOnTheHour", "summary"]

_HOUR_MS = 3_600_000


class NotOnTheHour(ValueError):
    """The counters are per hour: a range must start and end on one."""


def summary(
    store: CentralStore,
    since_ms: int | None,
    until_ms: int | None,
    zone: ZoneInfo,
    campaign: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    for moment in (since_ms, until_ms):
        if moment is not None and moment % _HOUR_MS:
            raise NotOnTheHour(moment)
    rows = store.rollups(
        None if since_ms is None else hour_of(since_ms),
        None if until_ms is None else hour_of(until_ms),
        campaign,
        node,
    )
    local_hour = _local_hours(zone)
    allowed = denied = shadowed = degraded = 0
    reasons: Counter[tuple[str, str]] = Counter()
    shadowed_reasons: Counter[str] = Counter()
    campaigns: dict[str, Counter[str]] = {}
    hours: dict[int, Counter[str]] = {hour: Counter() for hour in range(24)}
    outcomes: Counter[str] = Counter()
    for row in rows:
        if row.kind != "decision":
            if row.kind == "outcome":
                outcomes[row.reason] += row.n
            continue
        if row.result == "ALLOW":
            allowed += row.n
        else:
            denied += row.n
        reasons[(row.result, row.reason)] += row.n
        by_campaign = campaigns.setdefault(row.campaign, Counter())
        by_campaign[row.result] += row.n
        by_campaign["shadowed"] += row.shadowed
        shadowed += row.shadowed
        shadowed_reasons[row.reason] += row.shadowed
        degraded += row.degraded
        hours[local_hour(row.hour)][row.result] += row.n
    total = allowed + denied
    return {
        "decisions": total,
        "allowed": allowed,
        "denied": denied,
        "deny_rate": round(denied / total, 4) if total else 0.0,
        "shadowed": shadowed,
        "degraded": degraded,
        "by_reason": [
            {
                "result": result,
                "reason": reason,
                "decisions": count,
                "shadowed": shadowed_reasons[reason] if result == "DENY" else 0,
            }
            for (result, reason), count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "by_campaign": [
            {
                "campaign": name,
                "decisions": counts["ALLOW"] + counts["DENY"],
                "allowed": counts["ALLOW"],
                "denied": counts["DENY"],
                "deny_rate": round(counts["DENY"] / (counts["ALLOW"] + counts["DENY"]), 4),
                "shadowed": counts["shadowed"],
            }
            for name, counts in sorted(campaigns.items())
        ],
        "by_hour": [
            {"hour": hour, "decisions": c.total(), "allowed": c["ALLOW"], "denied": c["DENY"]}
            for hour, c in hours.items()
            if c.total()
        ],
        "outcomes": dict(sorted(outcomes.items())),
        "timezone": zone.key,
    }


def _local_hours(zone: ZoneInfo) -> Any:
    @lru_cache(maxsize=65_536)
    def hour(utc_hour: int) -> int:
        return datetime.fromtimestamp(utc_hour * 3600, zone).hour

    return hour
