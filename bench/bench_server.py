"""The server side of bench/agi_load.py: `dialguard serve` with a fixed clock, or the bare
baseline (same FastAGI loop and protocol module, answers ALLOW without any check).

The clock is fixed inside the calling hours so that every session is a full decision
(facts, atomic count, durable audit) whatever the hour the benchmark runs at.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
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
from dialguard.config import load_config
from dialguard.serve import tune_gc
from dialguard.service import Service
from dialguard.store import Store

# A Monday, 11:00 in Paris: inside the calling hours, no holiday.
FIXED_NOW = datetime(2026, 11, 30, 11, 0, tzinfo=ZoneInfo("Europe/Paris"))


class BareServer(FastAgiServer):
    """The baseline: the same sessions, the same four variables, no decision at all."""

    async def _check(self, request: AgiRequest, deadline: float) -> Variables:
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
    store = Store.from_settings(config.redis)
    journal = None if args.no_audit else Journal(config.audit_dir)
    service = Service(config, store, journal, clock=lambda: FIXED_NOW)
    await service.start()  # as `dialguard serve` does: pending changes, the journal followed
    server_class = BareServer if args.mode == "bare" else FastAgiServer
    server = server_class(service, config.server)
    await server.start()
    tune_gc()  # as `dialguard serve` does
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop()
    await service.aclose()
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["dialguard", "bare"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--audit", required=True)
    parser.add_argument("--deadline-ms", type=int, default=300)
    parser.add_argument("--no-audit", action="store_true", help="to measure the journal's cost")
    uvloop.run(main(parser.parse_args()))
