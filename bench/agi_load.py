"""AGI load benchmark: simulated Asterisk sessions against `dialguard serve` and a bare
FastAGI baseline (same loop, same protocol module, no decision), in one run.

    .venv/bin/python bench/agi_load.py [--duration 10] [--concurrency 200] [--rate 1000]
                                       [--metrics] [--campaign C] [--callerid N]

It starts a private redis-server on a free port (never 6379), loads consents for a pool of
numbers (so sessions are full decisions: facts, atomic count, durable audit), then for each
server in turn: a closed loop of N concurrent sessions (saturation) and an open loop at a
fixed offered rate (latency measured from each session's scheduled start, so a stalled
server cannot hide its queue). The server is pinned to core 0, the load generator and
Redis to core 1. Reports sessions/s, connect-to-close p50/p99/p99.9, server CPU per
session and the load generator's own CPU (to show it is not the bottleneck).

`--ship`: worker 0's shipper runs beside the server, into a SQLite store (as `serve`
with a [central] section); `--backlog N` gives its journal N records not shipped yet (a
store back after an outage), shipped while the decisions run. "children CPU" is the
shipper's share of a core over the phase.

`--metrics`: the dialguard server counts and serves /metrics (as with a [metrics] section),
scraped every `--scrape-every` seconds during the run; its decision count is checked
against the audit journal's at the end. Compare runs with and without it, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the Asterisk peer of the tests builds the blocks

from dialguard.import_files import ConsentRow, DncRow  # noqa: E402
from dialguard.numbers import normalise  # noqa: E402
from dialguard.store import Store  # noqa: E402
from dialguard.store.loading import load  # noqa: E402
from tests.agi.asterisk_peer import agi_env, encode_block  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from audit_bench import build  # noqa: E402

SERVER_CORE = 0
LOADGEN_CORE = 1
POOL = 50_000  # distinct numbers; each may be called 4 times in 30 days
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def block(number: str, campaign: str, port: int, uniqueid: int, callerid: str = "") -> bytes:
    """The agi_* block as Asterisk 22.10.1 sends it (shared/reference/asterisk.md);
    `callerid`: agi_callerid (default: the peer's 0147000000)."""
    overrides = {"agi_callerid": callerid} if callerid else None
    env = agi_env(
        "127.0.0.1",
        port,
        script="check",
        args=(number, campaign),
        session=uniqueid,
        env_overrides=overrides,
    )
    return b"".join(encode_block(env))


class AgiClient(asyncio.Protocol):
    """One Asterisk channel: send the block, answer every command as Asterisk does."""

    def __init__(self, payload: bytes, done: asyncio.Future[tuple[int, str]]) -> None:
        self.payload = payload
        self.done = done
        self.buffer = b""
        self.commands = 0
        self.result = ""
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.commands += 1
            if line.startswith(b'SET VARIABLE "DIALGUARD_RESULT"'):
                self.result = line.rsplit(b" ", 1)[1].strip(b'"').decode()
            assert self.transport is not None
            self.transport.write(b"200 result=1\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result((self.commands, self.result))


@dataclass
class Phase:
    server: str
    mode: str
    sessions: int = 0
    failed: int = 0
    allowed: int = 0
    denied: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    server_cpu_us: float = 0.0
    loadgen_cpu_pct: float = 0.0
    children_cpu_pct: float = 0.0  # the server's child processes (the shipper) over the phase


class Pacing:
    """Closed and open loops over `one(started)`, one call of whatever is measured; counts
    what a phase reports. This benchmark's Load and bench/ari_load.py's derive from it."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failed = 0
        self.allowed = 0
        self.denied = 0

    async def one(self, started: float) -> None:
        raise NotImplementedError

    async def closed_loop(self, concurrency: int, seconds: float) -> float:
        end = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < end:
                await self.one(time.perf_counter())

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started

    async def open_loop(self, rate: float, seconds: float) -> float:
        started = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        total = int(rate * seconds)
        for i in range(total):
            scheduled = started + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
        return time.perf_counter() - started


class Load(Pacing):
    def __init__(self, port: int, blocks: list[bytes]) -> None:
        super().__init__()
        self.port = port
        self.blocks = blocks

    async def one(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, str]] = loop.create_future()
        payload = random.choice(self.blocks)
        try:
            await loop.create_connection(lambda: AgiClient(payload, done), "127.0.0.1", self.port)
            commands, result = await asyncio.wait_for(done, 10)
        except (OSError, TimeoutError) as exc:
            if not self.failed:
                print(f"session failed: {exc!r}", file=sys.stderr)
            self.failed += 1
            return
        self.latencies.append(time.perf_counter() - started)
        if commands != 4:
            self.failed += 1
        elif result == "ALLOW":
            self.allowed += 1
        else:
            self.denied += 1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu(pid: int) -> float:
    """CPU seconds of the server's live child processes (worker 0's shipper)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_phase(
    name: str, mode: str, pid: int, make_load: Callable[[], Pacing], args: argparse.Namespace
) -> Phase:
    warmup = make_load()
    await warmup.closed_loop(min(args.concurrency, 50), 1.0)
    load = make_load()
    cpu_before = cpu_seconds(pid)
    children_before = children_cpu(pid)
    own_before = time.process_time()
    if mode == "closed":
        seconds = await load.closed_loop(args.concurrency, args.duration)
    else:
        seconds = await load.open_loop(args.rate, args.duration)
    server_cpu = cpu_seconds(pid) - cpu_before
    children = children_cpu(pid) - children_before
    own_cpu = time.process_time() - own_before
    done = len(load.latencies)
    return Phase(
        server=name,
        mode=f"closed {args.concurrency}" if mode == "closed" else f"open {args.rate:.0f}/s",
        sessions=done,
        failed=load.failed,
        allowed=load.allowed,
        denied=load.denied,
        seconds=round(seconds, 2),
        rate=round(done / seconds, 1),
        p50_ms=round(quantile(load.latencies, 0.50) * 1000, 2),
        p99_ms=round(quantile(load.latencies, 0.99) * 1000, 2),
        p999_ms=round(quantile(load.latencies, 0.999) * 1000, 2),
        server_cpu_us=round(server_cpu / max(done, 1) * 1e6, 1),
        loadgen_cpu_pct=round(own_cpu / seconds * 100, 1),
        children_cpu_pct=round(children / seconds * 100, 1),
    )


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found")
    process = subprocess.Popen(
        ["taskset", "-c", str(LOADGEN_CORE), binary, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


@contextmanager
def bench_server(
    mode: str,
    redis_url: str,
    workdir: Path,
    metrics_port: int = 0,
    ship: bool = False,
    shipping: tuple[str, ...] = (),
) -> Iterator[tuple[int, int]]:
    port = free_port()
    metrics = ["--metrics-port", str(metrics_port)] if metrics_port else []
    if ship and mode == "dialguard":
        metrics += ["--ship", *shipping]
    process = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CORE), sys.executable, str(ROOT / "bench" / "bench_server.py"),
         "--mode", mode, "--port", str(port), "--config", str(ROOT / "config" / "dialguard.toml"),
         "--redis", redis_url, "--audit", str(workdir / f"audit-{mode}"), *metrics],
        stdout=subprocess.PIPE,
        stderr=open(workdir / f"{mode}.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        sys.exit(f"{mode} server did not start; see {workdir / f'{mode}.log'}")
    try:
        yield process.pid, port
    finally:
        process.terminate()
        process.wait()


async def load_consents(redis_url: str, numbers: list[str]) -> None:
    store = Store.from_url(redis_url, "dialguard:", 5000)
    given = datetime.fromisoformat("2026-10-01T10:00:00+02:00")
    rows = [
        ConsentRow(normalise(n), "ACME", given, given + timedelta(days=365), f"bench-{i}")
        for i, n in enumerate(numbers)
    ]
    await load(store.lists, "consent", rows, "replace")
    dnc = [DncRow(normalise(n).key, "bench") for n in numbers[::100]]
    await load(store.lists, "dnc", dnc, "replace")
    await store.close()


async def main(args: argparse.Namespace) -> list[Phase]:
    os.sched_setaffinity(0, {LOADGEN_CORE})
    random.seed(7)
    numbers = [f"06{n:08d}" for n in random.sample(range(10**8), POOL)]
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="dialguard-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as redis_url:
            await load_consents(redis_url, numbers)
            for name in args.servers:
                metrics_port = free_port() if args.metrics and name == "dialguard" else 0
                label = f"{name}+metrics" if metrics_port else name
                if name == "dialguard" and args.backlog:
                    # Journal records the shipper has not shipped yet (a store back after an
                    # outage): it ships them while the decisions run.
                    build(workdir / "audit-dialguard", args.backlog, per_day=args.backlog)
                shipping: tuple[str, ...] = ("--ship-poll-ms", str(args.ship_poll_ms))
                if args.ship_store:
                    shipping += ("--ship-store", args.ship_store)
                if args.ship_cpus:
                    shipping += ("--ship-cpus", args.ship_cpus)
                with bench_server(name, redis_url, workdir, metrics_port, args.ship, shipping) as (
                    pid,
                    port,
                ):
                    scraping = None
                    if metrics_port:
                        url = f"http://127.0.0.1:{metrics_port}/metrics"
                        scraping = asyncio.create_task(scrape_every(url, args.scrape_every))
                    blocks = [
                        block(n, args.campaign, port, i, args.callerid)
                        for i, n in enumerate(numbers)
                    ]
                    for mode in args.modes:
                        phase = await run_phase(label, mode, pid, partial(Load, port, blocks), args)
                        print(json.dumps(asdict(phase)), flush=True)
                        phases.append(phase)
                    if scraping is not None:
                        scraping.cancel()
                        counted = await decisions_counted(url)
                if name == "dialguard":
                    reasons = audit_reasons(workdir / "audit-dialguard")
                    print("reasons:", dict(reasons))
                    if metrics_port:
                        print(f"decisions counted by /metrics: {counted:.0f}", end="")
                        print(f", audit records: {sum(reasons.values())}")
    return phases


async def scrape_every(url: str, seconds: float) -> None:
    """What Prometheus does, more often than its usual 15 s."""
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(seconds)
            async with session.get(url) as response:
                await response.read()


async def decisions_counted(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dialguard_decisions_total{")
    )


def audit_reasons(directory: Path) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for path in directory.glob("*.jsonl"):
        with path.open() as handle:
            reasons.update(json.loads(line)["reason"] for line in handle)
    return reasons


def report(
    phases: list[Phase], header: str = "| server | load | sessions/s | server CPU µs/session"
) -> None:
    """Print the phases as a table; `header` names the first, second, third and seventh
    columns (ARI says app, calls/s and app CPU µs/call)."""
    first, load, rate, cpu = (part.strip() for part in header.strip("| ").split("|"))
    print()
    print(
        f"| {first} | {load} | {rate} | p50 ms | p99 ms | p99.9 ms | {cpu} "
        "| loadgen CPU | children CPU | failed | allow/deny |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in phases:
        print(
            f"| {p.server} | {p.mode} | {p.rate:,.0f} | {p.p50_ms} | {p.p99_ms} | {p.p999_ms} "
            f"| {p.server_cpu_us} | {p.loadgen_cpu_pct} % | {p.children_cpu_pct} % | {p.failed} "
            f"| {p.allowed}/{p.denied} |"
        )
    closed = {p.server: p for p in phases if p.mode.startswith("closed")}
    if "bare" in closed and "dialguard" in closed:
        ratio = closed["dialguard"].rate / closed["bare"].rate
        print(f"\nsaturation ratio dialguard / bare: {ratio:.1%}")
    print(f"median of the p50s: {statistics.median(p.p50_ms for p in phases)} ms")


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop offered rate")
    parser.add_argument("--servers", nargs="+", default=["bare", "dialguard"])
    parser.add_argument(
        "--campaign",
        default="demo-prospecting",
        help="campaign of every call (demo-dialer: the caller-ID rule checks each)",
    )
    parser.add_argument("--callerid", default="", help="agi_callerid (0948120042: an NPV)")
    parser.add_argument("--modes", nargs="+", default=["closed", "open"])
    parser.add_argument(
        "--metrics", action="store_true", help="agi_load: dialguard counts, serves /metrics"
    )
    parser.add_argument(
        "--ship", action="store_true", help="dialguard ships its journal (a [central] section)"
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="with --ship: journal records not shipped yet"
    )
    parser.add_argument("--ship-store", default="", help="with --ship: the SQLite file")
    parser.add_argument("--ship-poll-ms", type=int, default=500, help="with --ship")
    parser.add_argument("--ship-cpus", default="", help="with --ship: its CPUs (e.g. 1)")
    parser.add_argument("--scrape-every", type=float, default=5.0, help="seconds between scrapes")
    return parser.parse_args()


if __name__ == "__main__":
    report(uvloop.run(main(arguments(__doc__.splitlines()[0]))))
