"""Run the FastAGI server (and the ARI app, the HTTP API, the metrics endpoint): one
process, or several sharing the FastAGI and API ports (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog

from dialguard.agi.server import FastAgiServer
from dialguard.api.app import HttpApi
from dialguard.api.tokens import BadTokens, read_tokens
from dialguard.ari.app import AriApp
from dialguard.ari.client import AriError, AriUnavailable
from dialguard.audit import Journal
from dialguard.config import Config
from dialguard.freshness import registry_sets, warnings
from dialguard.reload import Reloader
from dialguard.runfiles import PID_NAME, AlreadyRunning, PidFile
from dialguard.service import Service
from dialguard.store import Store, StoreUnavailable
from dialguard.telemetry import Telemetry

__all__ = ["connection_room", "raise_fd_limit", "serve", "tune_gc"]

log = structlog.get_logger("dialguard.serve")


def serve(config: Config, workers: int) -> int:
    """Serve until SIGTERM or SIGINT, reloading on SIGHUP; return the exit code."""
    if config.metrics is not None and config.metrics.port + workers - 1 > 65535:
        print(
            f"dialguard: {config.path}: metrics.port: {config.metrics.port}: worker"
            f" {workers - 1} would serve on {config.metrics.port + workers - 1},"
            " not a TCP port",
            file=sys.stderr,
        )
        return 1
    if config.api is not None:
        try:
            read_tokens(config.api.tokens_file)  # once, before any worker: one line
        except BadTokens as exc:
            print(f"dialguard: {exc}", file=sys.stderr)
            return 1
    if config.vicidial is not None and config.vicidial.password is None:
        # The sync would start, fail and start again every few seconds: say it once.
        print(
            f"dialguard: {config.path}: vicidial: no password for {config.vicidial.shown}:"
            " set DIALGUARD_VICIDIAL_PASSWORD or [vicidial] password_file",
            file=sys.stderr,
        )
        return 1
    # Until a process's handler is in place a SIGHUP would kill it (the default action):
    # held back meanwhile, by the workers too (they inherit the mask), and delivered once
    # the handler is there, so that a `dialguard reload` during start-up is not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    raise_fd_limit()  # before the workers start: they inherit it
    try:
        pid_file = PidFile.acquire(config.audit_dir, workers)
    except AlreadyRunning as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = config.audit_dir / PID_NAME
        print(f"dialguard: {where}: cannot write the pid file: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        if workers == 1:
            return _run_worker(config, reuse_port=False, index=0)
        return _run_workers(config, workers)
    finally:
        pid_file.release()


def _run_workers(config: Config, workers: int) -> int:
    parent = os.getpid()
    children: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 70  # EX_SOFTWARE, should anything escape the worker
            try:
                # One ARI websocket per application: a second one would take the app over
                # (ApplicationReplaced) and the two workers would keep stealing it back.
                worker = config if index == 0 else replace(config, ari=None)
                code = _run_worker(worker, reuse_port=True, index=index, parent=parent)
            finally:
                os._exit(code)  # never back into the parent's code (its pid file, its loop)
        children.append(pid)
    alive = set(children)

    def forward(signum: int, _frame: object) -> None:
        for child in list(alive):  # never a reaped pid: it may be someone else's by now
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # every worker reloads and answers for itself
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        alive.discard(child)
        code = os.waitstatus_to_exitcode(status)
        if code < 0:  # killed by a signal: a failure, reported the way a shell does
            log.error("worker_killed", pid=child, signal=-code)
            code = 128 - code
        worst = max(worst, code)
    return worst


# Open files a worker needs besides its sessions and its Redis connections: the listening
# sockets, the journal, the metrics endpoint, the ARI websocket, stdio, the pid file.
FD_RESERVE = 64
# Whatever systemd or Docker set as the hard limit, a worker never needs more than this.
FD_TARGET_MAX = 1 << 20


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (systemd's default soft limit is
    1,024: a flood would meet it long before max_connections); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_TARGET_MAX if hard == resource.RLIM_INFINITY else min(hard, FD_TARGET_MAX)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("fd_limit_unchanged", soft=soft, hard=hard, error=str(exc))
            return soft
        log.info("fd_limit_raised", soft_was=soft, soft=target, hard=hard)
        return target
    return soft


def connection_room(soft_limit: int) -> int:
    """Connections a worker can hold within `soft_limit` open files: half of what the
    reserve leaves, the other half for Redis connections (at most one per session)."""
    return max(8, (soft_limit - FD_RESERVE) // 2)


# How often the service looks at the registry checks' age (it changes once a day).
FRESHNESS_EVERY_S = 3600.0


async def watch_freshness(store: Store, configured: Callable[[], Config]) -> None:
    """Log, at start and then hourly, registry checks gone stale or going stale within a
    week, so an operator re-checks before calls start being denied OPTOUT_UNVERIFIED."""
    while True:
        try:
            current = await store.lists.current("optout")
        except StoreUnavailable as exc:
            log.warning("freshness_unknown", error=str(exc))
        else:
            policy = configured().policy
            today = datetime.now(UTC).astimezone(ZoneInfo(policy.default_timezone)).date()
            sets = registry_sets(current.meta, today, policy.at(today).optout_freshness_days)
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


# A helper process that exits (it should not: it retries whatever fails) is started again:
HELPER_RESTART_S = 5.0
HELPER_STOP_S = 10.0  # from SIGTERM to SIGKILL: a batch under way is rolled back anyway


async def supervise_shipper(config: Config) -> None:
    """`dialguard audit ship --follow` as a child process of worker 0 (see supervise)."""
    command = ["audit", "ship", "--follow"]
    await supervise(config, "shipper", command, store=_store_shown(config))


async def supervise_vicidial(config: Config) -> None:
    """`dialguard vicidial sync` as a child process of worker 0 (see supervise)."""
    shown = config.vicidial.shown if config.vicidial is not None else ""
    await supervise(config, "vicidial_sync", ["vicidial", "sync"], vicidial=shown)


async def supervise(config: Config, role: str, args: list[str], **shown: str) -> None:
    """`dialguard ARGS` as a child process of worker 0, started again if it ever exits
    (`ROLE_started`, `ROLE_exited` in the log). A process of its own: its parsing, hashing
    and database calls never hold the decisions' event loop (or its GIL), and nothing it
    does can fail a decision. It stops when this worker does, or by itself when this
    worker is gone (SIGKILL)."""
    command = [
        sys.executable, "-m", "dialguard", *args,
        "--config", str(config.path), "--parent", str(os.getpid()),
    ]  # fmt: skip
    while True:
        process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL)
        log.info(f"{role}_started", pid=process.pid, **shown)
        try:
            code = await process.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), HELPER_STOP_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            raise
        log.error(f"{role}_exited", code=code, restart_in_s=HELPER_RESTART_S)
        await asyncio.sleep(HELPER_RESTART_S)


def _store_shown(config: Config) -> str:
    return config.central.shown if config.central is not None else ""


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def tune_gc() -> None:
    """Once started: everything loaded so far lives as long as the process, so keep it out
    of the cyclic collector's scans, and collect young objects less often (a session
    allocates a few hundred). Measured: 263 instead of 275 µs of CPU per session."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _run_worker(config: Config, *, reuse_port: bool, index: int, parent: int = 0) -> int:
    serving = _serve(config, reuse_port=reuse_port, index=index, parent=parent)
    # uvloop roughly halves the event loop's CPU per session (docs/benchmarks.md).
    if sys.platform != "win32":
        import uvloop

        return uvloop.run(serving)
    return asyncio.run(serving)  # pragma: no cover


class _CannotStart(Exception):
    """One line for stderr and the exit code: the service does not start."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# How often a worker looks whether its parent is still there.
PARENT_CHECK_S = 1.0


async def _serve(config: Config, *, reuse_port: bool, index: int, parent: int) -> int:
    try:
        # Whatever was started is stopped in reverse order, on a failed start as at SIGTERM.
        async with contextlib.AsyncExitStack() as running:
            reloader = await _start(running, config, reuse_port=reuse_port, index=index)
            tune_gc()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            reloads: set[asyncio.Task[object]] = set()

            def reload() -> None:
                task: asyncio.Task[object] = loop.create_task(reloader.reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, reload)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
            if parent:
                orphan_watch = loop.create_task(_stop_when_orphaned(parent, stop))
                running.callback(orphan_watch.cancel)
            log.info("started", node=config.node, policy=config.policy.name, pid=os.getpid())
            await stop.wait()
    except _CannotStart as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        return exc.code
    return 0


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A worker whose parent died (SIGKILL, the OOM killer) stops as at SIGTERM: nobody
    would forward it a signal any more, and it would keep the pid file locked under a
    pid that may soon be another process's."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_S)
    log.error("parent_gone", parent=parent)
    stop.set()


async def _start(
    running: contextlib.AsyncExitStack, config: Config, *, reuse_port: bool, index: int
) -> Reloader:
    # Counted only when someone can read the counts: without [metrics], nothing is.
    telemetry = Telemetry() if config.metrics is not None else None
    store = Store.from_settings(config.redis, telemetry=telemetry)
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
            " does not read; import them again (--replace), then delete those keys left"
            " (docs/data-model.md, Upgrading)",
            2,
        )
    journal = Journal(config.audit_dir, telemetry)
    service = Service(config, store, journal, telemetry=telemetry)
    running.push_async_callback(service.aclose)  # slot releases go out before the store closes
    await service.start()  # changes the journal holds and Redis never took: applied now
    server = FastAgiServer(service, config.server)
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit != resource.RLIM_INFINITY:
        server.cap_connections(connection_room(soft_limit))
        if server.max_connections < config.server.max_connections:
            # Past the limit the event loop would close new connections without a word.
            log.warning(
                "max_connections_lowered",
                configured=config.server.max_connections,
                max_connections=server.max_connections,
                open_files_limit=soft_limit,
            )
    try:
        await server.start(reuse_port=reuse_port)
    except OSError as exc:
        where = f"{config.server.host}:{config.server.port}"
        raise _CannotStart(f"cannot listen on {where}: {exc.strerror}", 2) from None
    running.push_async_callback(server.stop)
    sessions: dict[str, Callable[[], int]] = {"fastagi": lambda: server.sessions}
    ari_app: AriApp | None = None
    if config.ari:
        ari = ari_app = AriApp(service, config.ari, config.server)
        sessions["ari"] = lambda: ari.busy
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
    api: HttpApi | None = None
    if config.api is not None:
        # Every worker on the one port, as FastAGI: the kernel spreads the connections.
        http = api = HttpApi(service, config.api)
        sessions["http"] = lambda: http.busy
        try:
            await http.start(reuse_port=reuse_port)
        except BadTokens as exc:
            raise _CannotStart(str(exc), 1) from None
        except OSError as exc:
            where = f"{config.api.host}:{config.api.port}"
            raise _CannotStart(f"cannot serve the API on {where}: {exc.strerror}", 2) from None
        running.push_async_callback(http.stop)
    if config.metrics is not None:  # one endpoint per worker: the counters are per process
        from dialguard.metrics import start_metrics

        try:
            metrics = await start_metrics(service, config.metrics, sessions=sessions, worker=index)
        except OSError as exc:
            where = f"{config.metrics.host}:{config.metrics.port + index}"
            raise _CannotStart(f"cannot serve metrics on {where}: {exc.strerror}", 2) from None
        running.push_async_callback(metrics.cleanup)
    if index == 0:
        # One process watches the registry checks' age: the others would only repeat it.
        # It reads the policy in force at each look (a reload may change it).
        freshness = watch_freshness(store, lambda: service.config)
        watcher = asyncio.get_running_loop().create_task(freshness)
        running.callback(watcher.cancel)
        if config.central is not None and config.central.ship:
            shipping = asyncio.get_running_loop().create_task(supervise_shipper(config))
            running.push_async_callback(_cancelled, shipping)
        if config.vicidial is not None:
            syncing = asyncio.get_running_loop().create_task(supervise_vicidial(config))
            running.push_async_callback(_cancelled, syncing)

    def put_in_force(new: Config) -> None:
        service.reconfigure(new)
        server.reconfigure(new.server)
        if ari_app is not None:
            ari_app.server = new.server
        if api is not None and new.api is not None:
            api.reconfigure(new.api)

    return Reloader(config, journal, put_in_force, worker=index)
