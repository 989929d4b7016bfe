"""The server side of bench/agi_load.py: `dialguard serve` with a fixed clock, or the bare
baseline (same FastAGI loop and protocol module, answers ALLOW without any check).

`--ship`: worker 0's shipper runs beside it, as `dialguard serve` runs it with a
[central] section (a child process shipping the journal into a SQLite store).
`--ship-store FILE` puts that store elsewhere (/dev/shm: no disk), `--ship-poll-ms` sets
its poll, `--ship-cpus 1` moves the shipper off the server's CPU set (the server is
pinned by agi_load; a child inherits the pinning).

`--metrics-port P`: with the counters and the [metrics] endpoint on P, as `dialguard
serve` runs them when its configuration has a [metrics] section; without it, nothing is
counted (no [metrics] section).

The clock is fixed inside the calling hours so that every session is a full decision
(facts, atomic count, durable audit) whatever the hour the benchmark runs at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import uvloop

from dialguard.agi.protocol import AgiRequest
from dialguard.agi.server import FastAgiServer, Variables
from dialguard.audit import Journal
from dialguard.cli.common import configure_logging
from dialguard.config import MetricsSettings, ServerSettings, load_config
from dialguard.metrics import start_metrics
from dialguard.serve import supervise_shipper, tune_gc
from dialguard.service import Service
from dialguard.store import Store
from dialguard.telemetry import Telemetry

# A Monday, 11:00 in Paris: inside the calling hours, no holiday.
FIXED_NOW = datetime(2026, 11, 30, 11, 0, tzinfo=ZoneInfo("Europe/Paris"))


class BareServer(FastAgiServer):
    """The baseline: the same sessions, the same four variables, no decision at all."""

    async def _check(
        self, request: AgiRequest, deadline: float, settings: ServerSettings
    ) -> Variables:
        return {
            "DIALGUARD_RESULT": "ALLOW",
            "DIALGUARD_REASON": "CONSENT",
            "DIALGUARD_ID": "0",
            "DIALGUARD_NUMBER": "+33612345678",
        }


async def main(args: argparse.Namespace) -> None:
    configure_logging(logging.WARNING)
    config = load_config(Path(args.config), env={"DIALGUARD_REDIS_URL": args.redis})
    config = replace(
        config,
        audit_dir=Path(args.audit),
        server=replace(config.server, port=args.port, deadline_ms=args.deadline_ms),
    )
    telemetry = Telemetry() if args.metrics_port else None
    store = Store.from_settings(config.redis, telemetry=telemetry)
    journal = None if args.no_audit else Journal(config.audit_dir, telemetry)
    service = Service(config, store, journal, clock=lambda: FIXED_NOW, telemetry=telemetry)
    await service.start()  # as `dialguard serve` does: pending changes, the journal followed
    server_class = BareServer if args.mode == "bare" else FastAgiServer
    server = server_class(service, config.server)
    await server.start()
    if args.metrics_port:
        settings = MetricsSettings("127.0.0.1", args.metrics_port)
        sessions = {"fastagi": lambda: server.sessions}
        metrics = await start_metrics(service, settings, sessions=sessions)
    shipping = None
    if args.ship:
        # As `serve` with a [central] section: worker 0's child process ships the journal
        # into a SQLite store beside it (the child reads a configuration file: this one).
        child = Path(args.audit).parent / f"central-{args.mode}.toml"
        store_file = args.ship_store or f"central-{args.mode}.sqlite3"
        child.write_text(
            f'node = "bench"\n[audit]\ndir = "{Path(args.audit).resolve()}"\n[policy]\n'
            f'file = "{config.path.parent.resolve() / "policy" / "france.toml"}"\n'
            f'[central]\npath = "{store_file}"\npoll_ms = {args.ship_poll_ms}\n'
            '[campaigns.c]\nprincipal = "ACME"\npurpose = "prospecting"\n',
            encoding="utf-8",
        )
        shipping = asyncio.create_task(supervise_shipper(replace(config, path=child)))
        if args.ship_cpus:
            cpus = {int(cpu) for cpu in args.ship_cpus.split(",")}
            moving = asyncio.create_task(_move_children(cpus))
    tune_gc()  # as `dialguard serve` does
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    if args.ship_cpus:
        moving.cancel()
    if shipping is not None:
        shipping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shipping
    if args.metrics_port:
        await metrics.cleanup()
    await server.stop()
    await service.aclose()
    await store.close()


async def _move_children(cpus: set[int]) -> None:
    """Keep this process's children (the shipper, restarted or not) on `cpus`."""
    while True:
        for task in Path("/proc/self/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.sched_setaffinity(int(child), cpus)
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["dialguard", "bare"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--audit", required=True)
    parser.add_argument("--deadline-ms", type=int, default=300)
    parser.add_argument("--no-audit", action="store_true", help="to measure the journal's cost")
    parser.add_argument("--metrics-port", type=int, default=0, help="count and serve metrics")
    parser.add_argument("--ship", action="store_true", help="ship the journal as serve does")
    parser.add_argument("--ship-store", default="", help="the shipper's SQLite file")
    parser.add_argument("--ship-poll-ms", type=int, default=500)
    parser.add_argument("--ship-cpus", default="", help="CPUs for the shipper (e.g. 1)")
    uvloop.run(main(parser.parse_args()))
