"""Soak: `dialguard serve` at a steady rate for a long time, with imports, list swaps and
reloads mixed in; every minute the server's RSS and open files, Redis's memory and the
minute's latency (p50, p99) are sampled. Start and end must agree within 10 %.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 1000] [--sample-s 60]
                                   [--plot docs/soak.png] [--table .run/soak/soak.md]

It starts a private redis-server on a free port (never 6379) and the real `dialguard
serve` (one worker, the shipped deadline and bounds) with a fail-closed non-commercial
campaign: ALLOW at any hour of the real clock, and no attempt counted (a prospecting
campaign also counts each call, ~180 B of Redis kept 30 days by design: that is growth,
not a leak, and would hide one). The load is an open loop of FastAGI sessions (an
Asterisk-like client: the block, a reply to each command) on fresh numbers. Mixed in:

- every `--import-every-s` (120): `dialguard import dnc --replace` of `--list-size`
  (100,000) numbers, alternating two files: the list in force is swapped each time;
- every `--reload-every-s` (45): `dialguard reload` (configuration and policy read again);
- every 10 s: a do-not-call taken live (`dialguard dnc add`) and checked denied.

Prints one line per sample and a Markdown table at the end, draws the four series to
`--plot` (matplotlib), exits 1 if a call failed or an end figure is more than 10 % off
its start (the first full minute against the last), beyond a floor for noise: 2 open
files, 2 MiB of RSS, 1 MiB of Redis, 2 ms of p99 (a shared machine's jitter).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the Asterisk peer of the tests builds the blocks

from tests.agi.asterisk_peer import agi_env, encode_block  # noqa: E402
from tests.reliability.served import write_config  # noqa: E402

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
DNC_LIVE = "0699999999"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Session(asyncio.Protocol):
    """One Asterisk channel: the block, then "200 result=1" to each command."""

    def __init__(self, payload: bytes, done: asyncio.Future[str]) -> None:
        self.payload, self.done = payload, done
        self.buffer = b""
        self.result = ""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.startswith(
                (b'SET VARIABLE "DIALGUARD_RESULT"', b'SET VARIABLE "DIALGUARD_REASON"')
            ):
                self.result += line.rsplit(b" ", 1)[1].strip(b'"').decode() + " "
            self.transport.write(b"200 result=1\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.result.strip())


@dataclass
class Minute:
    minute: float
    rss_mib: float
    fds: int
    redis_mib: float
    sessions: int  # of the open files, FastAGI connections in flight at that instant
    calls: int
    failed: int
    p50_ms: float
    p99_ms: float
    answers: dict[str, int] = field(default_factory=dict)


@dataclass
class Soak:
    port: int
    rate: float
    latencies: list[float] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    events: list[str] = field(default_factory=list)

    async def one(self, payload: bytes, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        try:
            await loop.create_connection(lambda: Session(payload, done), "127.0.0.1", self.port)
            answer = await asyncio.wait_for(done, 10)
        except (OSError, TimeoutError):
            self.failed += 1
            return
        if not answer:
            self.failed += 1
            return
        self.latencies.append(time.perf_counter() - scheduled)
        self.answers[answer] = self.answers.get(answer, 0) + 1

    async def run(self, seconds: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        # Built beforehand: the load generator shares the machine with what it measures.
        rng = random.Random(1)
        blocks = []
        for serial in range(20_000):
            number = f"07{rng.randrange(10_000_000, 99_999_999):08d}"
            env = agi_env("127.0.0.1", self.port, script="check", args=(number, "soak"),
                          session=serial)  # fmt: skip
            blocks.append(b"".join(encode_block(env)))
        started = time.perf_counter()
        for i in range(int(seconds * self.rate)):
            scheduled = started + i / self.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(blocks[i % len(blocks)], scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)

    def take(self) -> tuple[list[float], dict[str, int], int]:
        latencies, answers, failed = self.latencies, self.answers, self.failed
        self.latencies, self.answers, self.failed = [], {}, 0
        return latencies, answers, failed


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait()


def dialguard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "dialguard"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def write_list(path: Path, seed: int, size: int) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        out.write("number\n")
        for _ in range(size):
            out.write(f"06{rng.randrange(100_000_000):08d}\n")


def sample(pid: int, port: int) -> tuple[float, int, int]:
    """RSS (MiB), open files, and of those the FastAGI connections open at that instant
    (sessions in flight come and go with the latency: a leak shows in the rest)."""
    statm = Path(f"/proc/{pid}/statm").read_text().split()
    fds = os.listdir(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    sessions = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] != "0A" and fields[9] in inodes:
                    sessions += 1  # 0A: the listening socket itself
    return int(statm[1]) * PAGE_KIB / 1024, len(fds), sessions


async def chores(
    args: argparse.Namespace, env: dict[str, str], workdir: Path, soak: Soak, end: float
) -> None:
    """Imports (list swaps), reloads and live do-not-calls until `end`."""
    files = [workdir / "list-a.csv", workdir / "list-b.csv"]
    for seed, path in enumerate(files):
        write_list(path, seed, args.list_size)
    started = time.monotonic()
    next_import, next_reload, next_dnc, imports = 5.0, args.reload_every_s, 10.0, 0
    while time.monotonic() < end:
        now = time.monotonic() - started
        if now >= next_import:
            path = files[imports % 2]
            done = await asyncio.to_thread(dialguard, env, "import", "dnc", str(path), "--replace")
            imports += 1
            soak.events.append(f"{now:.0f}s import {path.name}: exit {done.returncode}")
            if done.returncode != 0:
                print(f"import failed: {done.stderr.strip()}", file=sys.stderr)
                soak.failed += 1
            next_import += args.import_every_s
        if now >= next_reload:
            done = await asyncio.to_thread(dialguard, env, "reload")
            soak.events.append(f"{now:.0f}s reload: exit {done.returncode}")
            if done.returncode != 0:
                print(f"reload failed: {done.stderr.strip()}", file=sys.stderr)
                soak.failed += 1
            next_reload += args.reload_every_s
        if now >= next_dnc:
            number = f"0698{random.randrange(1_000_000):06d}"
            done = await asyncio.to_thread(dialguard, env, "dnc", "add", number)
            check = await asyncio.to_thread(
                dialguard, env, "check", number, "--campaign", "soak", "--json"
            )
            denied = check.returncode == 0 and '"INTERNAL_DNC"' in check.stdout
            if done.returncode != 0 or not denied:
                print(f"live do-not-call not enforced: {done.stderr} {check.stdout}")
                soak.failed += 1
            next_dnc += 10.0
        await asyncio.sleep(0.5)


async def soak_run(args: argparse.Namespace) -> list[Minute]:
    workdir = Path(tempfile.mkdtemp(prefix="dialguard-soak-"))
    minutes: list[Minute] = []
    try:
        with redis_server(workdir) as redis_port:
            url = f"redis://127.0.0.1:{redis_port}/0"
            port = free_port()
            extra = '\n[campaigns.soak]\nprincipal = "ACME"\npurpose = "non_commercial"\n'
            config = write_config(workdir, port, extra=extra)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
            env |= {"DIALGUARD_CONFIG": str(config), "DIALGUARD_REDIS_URL": url}
            log = (workdir / "serve.log").open("wb")
            server = subprocess.Popen(
                [str(Path(sys.executable).parent / "dialguard"), "serve"],
                env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
            client = redis.Redis(port=redis_port)
            try:
                for _ in range(200):
                    if b'"started"' in (workdir / "serve.log").read_bytes():
                        break
                    await asyncio.sleep(0.05)
                soak = Soak(port, args.rate)
                started = time.monotonic()
                end = started + args.minutes * 60
                load = asyncio.create_task(soak.run(args.minutes * 60))
                chore = asyncio.create_task(chores(args, env, workdir, soak, end))
                next_sample = started + args.sample_s
                while not load.done():
                    await asyncio.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
                    if time.monotonic() < next_sample and not load.done():
                        continue
                    latencies, answers, failed = soak.take()
                    rss, fds, sessions = sample(server.pid, port)
                    used = int(client.info("memory")["used_memory"]) / 1024 / 1024
                    minute = Minute(
                        round((time.monotonic() - started) / 60, 2), round(rss, 1), fds,
                        round(used, 1), sessions, len(latencies), failed,
                        round(quantile(latencies, 0.5) * 1000, 2),
                        round(quantile(latencies, 0.99) * 1000, 2), answers,
                    )  # fmt: skip
                    minutes.append(minute)
                    print(json.dumps(asdict(minute)), flush=True)
                    next_sample += args.sample_s
                    if load.done() or time.monotonic() >= end:
                        break
                await load
                await chore
                for event in soak.events:
                    print(event)
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(20)
                client.close()
                log.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return minutes


def verdict(minutes: list[Minute]) -> list[str]:
    """What is more than 10 % off between the first full minute and the last."""
    if len(minutes) < 2:
        return ["fewer than two samples"]
    first, last = minutes[0], minutes[-1]
    problems = [f"minute {m.minute}: {m.failed} calls failed" for m in minutes if m.failed]
    checks = [
        ("RSS MiB", first.rss_mib, last.rss_mib, 2.0),
        ("open files but sessions", first.fds - first.sessions, last.fds - last.sessions, 2.0),
        ("Redis MiB", first.redis_mib, last.redis_mib, 1.0),
        ("p99 ms", first.p99_ms, last.p99_ms, 2.0),
    ]
    for name, start, end, slack in checks:
        if end > start * 1.10 and end - start > slack:
            problems.append(f"{name}: {start} at the start, {end} at the end (> 10 %)")
    return problems


def table(minutes: list[Minute]) -> str:
    lines = [
        "| minute | calls | failed | p50 ms | p99 ms | RSS MiB | open files (sessions) |"
        " Redis MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in minutes:
        lines.append(
            f"| {m.minute:g} | {m.calls:,} | {m.failed} | {m.p50_ms} | {m.p99_ms} |"
            f" {m.rss_mib} | {m.fds} ({m.sessions}) | {m.redis_mib} |"
        )
    return "\n".join(lines)


def plot(minutes: list[Minute], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [m.minute for m in minutes]
    series = [
        ("server RSS (MiB)", [m.rss_mib for m in minutes]),
        ("server open files but sessions in flight", [float(m.fds - m.sessions) for m in minutes]),
        ("Redis used_memory (MiB)", [m.redis_mib for m in minutes]),
        ("session p99 (ms)", [m.p99_ms for m in minutes]),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for axis, (label, values) in zip(axes.flat, series, strict=True):
        axis.plot(x, values, marker="o")
        axis.set_title(label)
        axis.set_ylim(bottom=0, top=max(values) * 1.3 if values and max(values) > 0 else 1)
        axis.grid(True, alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("minute")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--sample-s", type=float, default=60)
    parser.add_argument("--import-every-s", type=float, default=120)
    parser.add_argument("--reload-every-s", type=float, default=45)
    parser.add_argument("--list-size", type=int, default=100_000)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "soak.png")
    parser.add_argument("--table", type=Path, default=ROOT / ".run" / "soak" / "soak.md")
    args = parser.parse_args()
    minutes = uvloop.run(soak_run(args))
    title = (
        f"dialguard serve, {args.rate:.0f} decisions/s for {args.minutes:g} min, imports"
        f" every {args.import_every_s:.0f} s, reloads every {args.reload_every_s:.0f} s"
    )
    text = table(minutes)
    print(text)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(f"{title}\n\n{text}\n", encoding="utf-8")
    if minutes:
        plot(minutes, args.plot, title)
    problems = verdict(minutes)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
