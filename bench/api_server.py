"""The server side of bench/api.py: dialguard's HTTP API (HttpApi, as `serve` runs it) with
a fixed clock, or the bare baseline: an aiohttp app on the same loop (uvloop) answering
POST /v1/decisions with a constant JSON body, having read the request's body and nothing
else.

Prints `ready PORT` once listening.
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
from aiohttp import web

from dialguard.api.app import HttpApi
from dialguard.audit import Journal
from dialguard.cli.common import configure_logging
from dialguard.config import ApiSettings, load_config
from dialguard.serve import tune_gc
from dialguard.service import Service
from dialguard.store import Store

# Inside the calling hours, as bench/bench_server.py: a Monday, 11:00 in Paris.
FIXED_NOW = datetime(2026, 11, 30, 11, 0, tzinfo=ZoneInfo("Europe/Paris"))
CONSTANT = (
    b'{"result":"ALLOW","reason":"CONSENT","id":"01a2000000000000000000000",'
    b'"number":"+33612345678"}'
)


async def bare(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=CONSTANT, content_type="application/json")


async def main(args: argparse.Namespace) -> None:
    configure_logging(logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if args.mode == "bare":
        app = web.Application()
        app.router.add_post("/v1/decisions", bare)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
        tune_gc()
        print(f"ready {args.port}", flush=True)
        await stop.wait()
        await runner.cleanup()
        return
    config = load_config(Path(args.config), env={"DIALGUARD_REDIS_URL": args.redis})
    settings = ApiSettings(Path(args.tokens), port=args.port)
    config = replace(config, audit_dir=Path(args.audit), api=settings)
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir), clock=lambda: FIXED_NOW)
    await service.start()
    api = HttpApi(service, settings)
    await api.start()
    tune_gc()  # as `dialguard serve` does
    print(f"ready {api.port}", flush=True)
    await stop.wait()
    await api.stop()
    await service.aclose()
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["dialguard", "bare"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--audit", required=True)
    parser.add_argument("--tokens", required=True)
    uvloop.run(main(parser.parse_args()))
