"""How old the lists in force are, so an operator's alerting sees a registry check going
stale before calls start being denied.

Read from Redis at each scrape (four small reads): an import shows at the next scrape.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog
from prometheus_client import CollectorRegistry, Gauge

from dialguard.freshness import SOON_DAYS, registry_sets
from dialguard.service import Service
from dialguard.store import StoreUnavailable

__all__ = ["ListAges"]

log = structlog.get_logger("dialguard.metrics")


class ListAges:
    def __init__(self, service: Service, registry: CollectorRegistry) -> None:
        self._service = service
        self._up = Gauge(
            "dialguard_redis_up", "1 if the lists could be read from Redis", registry=registry
        )
        self._newest_age = Gauge(
            "dialguard_registry_newest_check_age_days",
            "Days since the newest registry (Bloctel) check in force (NaN: none)",
            registry=registry,
        )
        self._days_left = Gauge(
            "dialguard_registry_check_days_left",
            "Days until a result set's clear numbers stop counting (0 or less: stale)",
            ["version", "checked_on"],
            registry=registry,
        )
        self._stale_soon = Gauge(
            "dialguard_registry_clear_numbers_stale_soon",
            f"Clear numbers of result sets going stale within {SOON_DAYS} days",
            registry=registry,
        )
        self._list_age = Gauge(
            "dialguard_list_age_seconds",
            "Seconds since the list in force was last loaded or changed by an import",
            ["list"],
            registry=registry,
        )

    async def refresh(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        lists = self._service.store.lists
        policy = self._service.config.policy  # at each scrape: a reload may change it
        try:
            optout = await lists.current("optout")
            others = {kind: await lists.current(kind) for kind in ("dnc", "consent", "contract")}
        except StoreUnavailable as exc:
            log.warning("metrics_unavailable", error=str(exc))
            self._up.set(0)
            return
        self._up.set(1)
        today = now.astimezone(ZoneInfo(policy.default_timezone)).date()
        sets = registry_sets(optout.meta, today, policy.at(today).optout_freshness_days)
        self._newest_age.set(sets[0].age_days if sets else math.nan)
        self._days_left.clear()
        for result_set in sets:
            labels = (result_set.version, result_set.checked_on.isoformat())
            self._days_left.labels(*labels).set(result_set.days_left)
        self._stale_soon.set(sum(s.clear for s in sets if s.stale_soon))
        self._list_age.clear()
        for kind, current in others.items():
            when = current.meta.get("updated_at") or current.meta.get("loaded_at")
            if when:
                age = (now - datetime.fromisoformat(when)).total_seconds()
                self._list_age.labels(kind).set(age)
