"""`dialguard console`: the schema brought up to date, then the pages served until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from datetime import datetime

import structlog
from aiohttp import web

from dialguard.central import CentralUnavailable
from dialguard.config import Config, is_loopback
from dialguard.console.app import make_app, make_console

__all__ = ["serve_console"]

log = structlog.get_logger("dialguard.console")


def serve_console(
    config: Config, host: str | None = None, port: int | None = None, at: datetime | None = None
) -> int:
    """Serve until SIGTERM or SIGINT; the exit code (2: the store or the port). `at`: the
    instant the pages take for now (fixed), instead of the clock."""
    console = make_console(config, clock=(lambda: at) if at is not None else None)
    settings = console.settings
    host = host or settings.host
    port = port or settings.port
    try:
        version, applied = console.reader.migrate()
    except CentralUnavailable as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        return 2
    log.info(
        "central_connected", store=console.reader.settings.shown, schema=version, applied=applied
    )
    if not is_loopback(host) and not settings.secure_cookies:
        log.warning(
            "console_not_on_loopback",
            host=host,
            hint="passwords cross the network in clear unless HTTPS ends in front:"
            " put a reverse proxy on this machine and keep host = 127.0.0.1",
        )
    return asyncio.run(_serve(make_app(console), host, port))


async def _serve(app: web.Application, host: str, port: int) -> int:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(
            f"dialguard: console: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr
        )
        return 2
    log.info("console_listening", host=host, port=port, url=f"http://{host}:{port}/")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await runner.cleanup()
    log.info("stopped")
    return 0
