"""`GET /metrics` (Prometheus text format): how old the lists in force are, so an operator's
alerting sees a registry check going stale before calls start being denied.

Read from Redis at each scrape (four small reads): an import shows at the next scrape.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dialguard.config import Config, MetricsSettings
from dialguard.freshness import SOON_DAYS, registry_sets
from dialguard.store import Store, StoreUnavailable

__all__ = ["Metrics", "start_metrics"]

log = structlog.get_logger("dialguard.metrics")


class Metrics:
    def __init__(self, store: Store, config: Config) -> None:
        self._store = store
        self._zone = ZoneInfo(config.policy.default_timezone)
        self._freshness_days = config.policy.optout_freshness_days
        self.registry = CollectorRegistry()
        self._up = Gauge(
            "dialguard_redis_up", "1 if the lists could be read from Redis", registry=self.registry
        )
        self._newest_age = Gauge(
            "dialguard_registry_newest_check_age_days",
            "Days since the newest registry (Bloctel) check in force (NaN: none)",
            registry=self.registry,
        )
        self._days_left = Gauge(
            "dialguard_registry_check_days_left",
            "Days until a result set's clear numbers stop counting (0 or less: stale)",
            ["version", "checked_on"],
            registry=self.registry,
        )
        self._stale_soon = Gauge(
            "dialguard_registry_clear_numbers_stale_soon",
            f"Clear numbers of result sets going stale within {SOON_DAYS} days",
            registry=self.registry,
        )
        self._list_age = Gauge(
            "dialguard_list_age_seconds",
            "Seconds since the list in force was last loaded or changed by an import",
            ["list"],
            registry=self.registry,
        )

    async def refresh(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        lists = self._store.lists
        try:
            optout = await lists.current("optout")
            others = {kind: await lists.current(kind) for kind in ("dnc", "consent", "contract")}
        except StoreUnavailable as exc:
            log.warning("metrics_unavailable", error=str(exc))
            self._up.set(0)
            return
        self._up.set(1)
        sets = registry_sets(optout.meta, now.astimezone(self._zone).date(), self._freshness_days)
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

    async def handle(self, request: web.Request) -> web.Response:
        await self.refresh()
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response


async def start_metrics(store: Store, config: Config, settings: MetricsSettings) -> web.AppRunner:
    """Serve /metrics on settings.host:port; OSError if the port cannot be bound."""
    metrics = Metrics(store, config)
    app = web.Application()
    app.router.add_get("/metrics", metrics.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("metrics_listening", host=settings.host, port=settings.port)
    return runner
