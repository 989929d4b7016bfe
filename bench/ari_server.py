"""The app side of bench/ari_load.py: dialguard's Stasis application with a fixed clock, or
the bare baseline (same client, same event handling, same five REST calls per channel,
answers ALLOW without any check).

The clock is fixed inside the calling hours so that every call is a full decision (facts,
atomic count, durable audit) whatever the hour the benchmark runs at.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import uvloop

from dialguard.ari.app import AriApp, _Answer
from dialguard.ari.client import Channel
from dialguard.audit import Journal
from dialguard.cli.common import configure_logging
from dialguard.config import AriSettings, load_config
from dialguard.serve import tune_gc
from dialguard.service import Service
from dialguard.store import Store

# A Monday, 11:00 in Paris: inside the calling hours, no holiday.
FIXED_NOW = datetime(2026, 11, 30, 11, 0, tzinfo=ZoneInfo("Europe/Paris"))


class BareApp(AriApp):
    """The baseline: the same channels, the same four variables and continue, no decision."""

    async def _answer(
        self, channel: Channel, args: tuple[str, ...], deadline: float, stale: bool
    ) -> _Answer:
        variables = {
            "DIALGUARD_RESULT": "ALLOW",
            "DIALGUARD_REASON": "CONSENT",
            "DIALGUARD_ID": "0",
            "DIALGUARD_NUMBER": "+33612345678",
        }
        return _Answer(variables, hangup=False)


async def main(args: argparse.Namespace) -> None:
    configure_logging(logging.WARNING)
    config = load_config(Path(args.config), env={"DIALGUARD_REDIS_URL": args.redis})
    config = replace(
        config,
        audit_dir=Path(args.audit),
        server=replace(config.server, deadline_ms=args.deadline_ms),
    )
    password = os.environ["DIALGUARD_ARI_PASSWORD"]  # not on the command line (ps shows it)
    settings = AriSettings(args.ari, "dialguard", "dialguard", password, args.on_deny)
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir), clock=lambda: FIXED_NOW)
    app_class = BareApp if args.mode == "bare" else AriApp
    app = app_class(service, settings, config.server)
    await app.start()
    tune_gc()  # as `dialguard serve` does
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await app.stop()
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["dialguard", "bare"], required=True)
    parser.add_argument("--ari", required=True, help="the fake ARI's URL")
    parser.add_argument("--config", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--audit", required=True)
    parser.add_argument("--deadline-ms", type=int, default=300)
    parser.add_argument("--on-deny", choices=["hangup", "continue"], default="hangup")
    uvloop.run(main(parser.parse_args()))
