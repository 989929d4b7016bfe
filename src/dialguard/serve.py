"""Run the FastAGI server: one process, or several sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog

from dialguard.agi.server import FastAgiServer
from dialguard.ari.app import AriApp
from dialguard.ari.client import AriError, AriUnavailable
from dialguard.audit import Journal
from dialguard.config import Config
from dialguard.freshness import registry_sets, warnings
from dialguard.service import Service
from dialguard.store import Store, StoreUnavailable

__all__ = ["serve", "tune_gc"]

log = structlog.get_logger("dialguard.serve")


def serve(config: Config, workers: int) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    if workers == 1:
        return _run_worker(config, reuse_port=False, watch=True)
    children: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            # One ARI websocket per application: a second one would take the app over
            # (ApplicationReplaced) and the two workers would keep stealing it back.
            worker = config if index == 0 else replace(config, ari=None)
            os._exit(_run_worker(worker, reuse_port=True, watch=index == 0))
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        if code < 0:  # killed by a signal: a failure, reported the way a shell does
            log.error("worker_killed", pid=child, signal=-code)
            code = 128 - code
        worst = max(worst, code)
    return worst


# How often the service looks at the registry checks' age (it changes once a day).
FRESHNESS_EVERY_S = 3600.0


async def watch_freshness(store: Store, config: Config) -> None:
    """Log, at start and then hourly, registry checks gone stale or going stale within a
    week, so an operator re-checks before calls start being denied OPTOUT_UNVERIFIED."""
    zone = ZoneInfo(config.policy.default_timezone)
    while True:
        try:
            current = await store.lists.current("optout")
        except StoreUnavailable as exc:
            log.warning("freshness_unknown", error=str(exc))
        else:
            today = datetime.now(UTC).astimezone(zone).date()
            sets = registry_sets(current.meta, today, config.policy.optout_freshness_days)
            for event, fields in warnings(sets):
                log.warning(event, **fields)
            newest = sets[0] if sets else None
            log.info(
                "registry_age",
                sets=len(sets),
                newest_checked_on=newest.checked_on.isoformat() if newest else None,
                newest_age_days=newest.age_days if newest else None,
            )
        await asyncio.sleep(FRESHNESS_EVERY_S)


def tune_gc() -> None:
    """Once started: everything loaded so far lives as long as the process, so keep it out
    of the cyclic collector's scans, and collect young objects less often (a session
    allocates a few hundred). Measured: 263 instead of 275 µs of CPU per session."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _run_worker(config: Config, *, reuse_port: bool, watch: bool) -> int:
    # uvloop roughly halves the event loop's CPU per session (docs/benchmarks.md).
    if sys.platform != "win32":
        import uvloop

        return uvloop.run(_serve(config, reuse_port=reuse_port, watch=watch))
    return asyncio.run(_serve(config, reuse_port=reuse_port, watch=watch))  # pragma: no cover


class _CannotStart(Exception):
    """One line for stderr and the exit code: the service does not start."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def _serve(config: Config, *, reuse_port: bool, watch: bool) -> int:
    try:
        # Whatever was started is stopped in reverse order, on a failed start as at SIGTERM.
        async with contextlib.AsyncExitStack() as running:
            await _start(running, config, reuse_port=reuse_port, watch=watch)
            tune_gc()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            log.info("started", node=config.node, policy=config.policy.name, pid=os.getpid())
            await stop.wait()
    except _CannotStart as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        return exc.code
    return 0


async def _start(
    running: contextlib.AsyncExitStack, config: Config, *, reuse_port: bool, watch: bool
) -> None:
    store = Store.from_settings(config.redis)
    running.push_async_callback(store.close)
    try:
        await store.ping()
        legacy = await store.lists.legacy_keys()
    except StoreUnavailable as exc:
        # Not fatal: every call then gets the campaign's fail mode until Redis is back.
        log.error("redis_unavailable_at_start", error=str(exc))
        legacy = []
    if legacy:
        raise _CannotStart(
            f"Redis holds lists in an earlier layout ({', '.join(legacy)}) that this version"
            " does not read; import them again, then delete those keys"
            " (docs/data-model.md, Upgrading)",
            2,
        )
    service = Service(config, store, Journal(config.audit_dir))
    running.push_async_callback(service.aclose)  # slot releases go out before the store closes
    await service.start()  # changes the journal holds and Redis never took: applied now
    server = FastAgiServer(service, config.server)
    try:
        await server.start(reuse_port=reuse_port)
    except OSError as exc:
        where = f"{config.server.host}:{config.server.port}"
        raise _CannotStart(f"cannot listen on {where}: {exc.strerror}", 2) from None
    running.push_async_callback(server.stop)
    if config.ari:
        ari = AriApp(service, config.ari, config.server)
        try:
            await ari.start()
        except AriError as exc:
            # Bad credentials or a wrong URL will not fix themselves: say so and stop. An
            # Asterisk not up yet is retried, as Redis is (calls fail closed meanwhile).
            if not isinstance(exc, AriUnavailable):
                await ari.client.close()
                raise _CannotStart(str(exc), 1) from None
            log.error("ari_unavailable_at_start", error=str(exc))
            await ari.start_retrying()
        running.push_async_callback(ari.stop)
    if config.metrics is not None and watch:  # one endpoint: the facts are not per process
        from dialguard.metrics import start_metrics

        try:
            metrics = await start_metrics(store, config, config.metrics)
        except OSError as exc:
            where = f"{config.metrics.host}:{config.metrics.port}"
            raise _CannotStart(f"cannot serve metrics on {where}: {exc.strerror}", 2) from None
        running.push_async_callback(metrics.cleanup)
    if watch:
        # One process watches the registry checks' age: the others would only repeat it.
        watcher = asyncio.get_running_loop().create_task(watch_freshness(store, config))
        running.callback(watcher.cancel)
