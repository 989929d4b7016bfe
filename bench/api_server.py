"""The server side of bench/api.py: dialguard's HTTP API (HttpApi, as `serve` runs it) with
a fixed clock, or the bare baseline: an aiohttp app on the same loop (uvloop) answering
POST /v1/decisions with a constant JSON body, having read the request's body and nothing
else.

Prints `ready PORT` once listening; at exit, on stderr, what the garbage collector and
the event loop's lateness cost (`pauses`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time
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


class Pauses:
    """Where a server's tail latency may come from: the garbage collector's pauses (per
    generation) and the event loop's lateness (a 1 ms timer's drift), reported at exit."""

    def __init__(self) -> None:
        self.gc: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.lag: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._collect)

    def _collect(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.gc[info["generation"]].append(time.perf_counter() - self._started)

    async def watch_loop(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lag.append(time.perf_counter() - before - 0.001)

    def report(self) -> str:
        def worst(values: list[float]) -> float:
            return round(max(values, default=0.0) * 1000, 2)

        lag = sorted(self.lag)
        return json.dumps(
            {
                "event": "pauses",
                "gc_count": {g: len(v) for g, v in self.gc.items()},
                "gc_max_ms": {g: worst(v) for g, v in self.gc.items()},
                "gc_total_ms": round(sum(sum(v) for v in self.gc.values()) * 1000, 1),
                "loop_lag_p99_ms": round(lag[int(len(lag) * 0.99)] * 1000, 2) if lag else 0,
                "loop_lag_max_ms": worst(lag),
            }
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
    pauses = Pauses()
    watching = loop.create_task(pauses.watch_loop())
    try:
        await serve(args, stop)
    finally:
        watching.cancel()
        print(pauses.report(), file=sys.stderr, flush=True)


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
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
