"""The `[metrics]` listener: `/healthz`, `/readyz` and `/metrics` over HTTP.

- `/healthz`: 200 `{"status": "ok"}` whenever the event loop answers;
- `/readyz`: dialguard.health's checks; 200 when all pass, 503 naming each failure;
- `/metrics`: Prometheus text: the lists' ages (read from Redis at the scrape) and the
  process's own series (dialguard.metrics.series).

`serve --workers N`: each worker has its own counters and serves them on port + its index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dialguard.config import MetricsSettings
from dialguard.health import readiness
from dialguard.metrics.lists import ListAges
from dialguard.metrics.series import ServiceSeries
from dialguard.service import Service

__all__ = ["start_metrics"]

log = structlog.get_logger("dialguard.metrics")


class _Endpoint:
    def __init__(
        self,
        service: Service,
        settings: MetricsSettings,
        sessions: Mapping[str, Callable[[], int]],
        worker: int,
    ) -> None:
        self._service = service
        self._settings = settings
        self._was_ready = True  # a first failing probe is logged, a first passing one not
        self.registry = CollectorRegistry(auto_describe=False)
        self._lists = ListAges(service, self.registry)
        if service.telemetry is not None:
            series = ServiceSeries(service, service.telemetry, sessions, worker)
            self.registry.register(series)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, checks = await readiness(self._service, self._settings.ready_max_pending_s)
        if ready != self._was_ready:  # on each change, not at every probe
            failed = {name: check["error"] for name, check in checks.items() if not check["ok"]}
            if ready:
                log.info("ready")
            else:
                log.warning("not_ready", **failed)
            self._was_ready = ready
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        await self._lists.refresh()
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response


async def start_metrics(
    service: Service,
    settings: MetricsSettings,
    *,
    sessions: Mapping[str, Callable[[], int]] | None = None,
    worker: int = 0,
) -> web.AppRunner:
    """Serve the endpoints on settings.host, port settings.port + worker; OSError if the
    port cannot be bound. `sessions`: each adapter's count of calls in flight."""
    endpoint = _Endpoint(service, settings, sessions or {}, worker)
    app = web.Application()
    app.router.add_get("/healthz", endpoint.healthz)
    app.router.add_get("/readyz", endpoint.readyz)
    app.router.add_get("/metrics", endpoint.metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = settings.port + worker
    site = web.TCPSite(runner, settings.host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("metrics_listening", host=settings.host, port=port, worker=worker)
    return runner
