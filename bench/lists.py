"""Imported lists at scale: `dialguard import` speed and memory, and lookups during a swap.

    .venv/bin/python bench/lists.py [--numbers 10000000] [--only all] [--runs 1]

It starts a private redis-server on a free port (never 6379; no persistence), writes a
copy of config/dialguard.toml pointing at it, and measures through the real CLI
(`dialguard import ... --replace --config CFG`, a subprocess):

- **dnc**: `import dnc` of N random distinct French mobile numbers ("0612345678" lines
  under the header `number`; 06 and 07, overseas blocks such as 0639 and 069x included,
  as in a real export), in random order;
- **bloctel**: `import bloctel` of an N-line registry result file
  (`telephone;identifiant;statut`, ~5 % INSCRIT, the rest OK), `--checked-at` three days
  ago;
- **swap**: with the N-number list in force, `import dnc --replace` of a second N-number
  file (half of it the first list's numbers, half new ones) while this process reads the
  facts of random numbers through `Store.facts` (the service's own script), one at a
  time, and checks every answer: a number of both lists must always read as listed, one
  of the old list only as listed until the swap and never after, one of the new list only
  the reverse, one of neither never. A read that fits neither the old list nor the new
  one whole, or the old one after the new one was seen, counts as a **partial read**
  (must be 0). A separate process sends PING every millisecond on its own connection:
  its slowest answer is the worst Redis stall during the import, the swap and the freeing
  of the old version.

Per import: wall time (process start to exit: the figure to quote), the importer's own
time and rows/s (its summary line: from reading the header to the old version freed),
its peak RSS (`VmHWM`) and CPU time (`os.wait4` on that child), Redis CPU time, the
time each of them spent runnable but waiting for a CPU (/proc/PID/schedstat: on a
shared machine, what other processes took), `used_memory` before and after, the MEMORY
USAGE of the version's keys (bytes per number), and Redis's SLOWLOG over the import
(commands that held it over 5 ms: what a lookup may wait behind).

Pinning (when `taskset` exists and there are 2 cores or more): the importer on core 0,
Redis, this process (reader) and the ping process on core 1.

The input files are generated once (seeded, a few seconds per 10 M lines) and cached in
--workdir; a rerun with the same --numbers reuses them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import platform
import random
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis

from dialguard.numbers import Number, normalise
from dialguard.serve import tune_gc
from dialguard.store import Store
from dialguard.store.keys import CLEAR, LISTED, Keys
from dialguard.store.lists import Census, Lists

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "config" / "dialguard.toml"
POLICY = ROOT / "config" / "policy" / "france.toml"
PREFIX = "dialguard:"
KEYS = Keys(PREFIX)
IMPORTER_CORE = 0
REDIS_CORE = 1  # and this process, and the ping process

SPACE = 200_000_000  # 0600000000 .. 0799999999
FIRST = 600_000_000
CHUNK = 1_000_000  # numbers formatted and written per write()
POOL = 10_000  # sample numbers per category for the reader
LISTED_SHARE = 0.05  # of the registry result file
FORMAT = 1  # bump when the generated files change


# --- input files ----------------------------------------------------------------------------


class Draws:
    """Random distinct numbers (offsets in SPACE) from one seed; `taken` marks every
    number handed out, a bitmap of SPACE bits (25 MB)."""

    def __init__(self, seed: int) -> None:
        self._rnd = random.Random(seed)
        self.taken = bytearray(SPACE // 8)
        self._words = self._stream()

    def _stream(self) -> Iterator[int]:
        taken = self.taken
        while True:
            for word in array("I", self._rnd.randbytes(4 * 65536)):
                x = word >> 4  # 28 bits: 268 M, three draws in four land in SPACE
                if x >= SPACE:
                    continue
                i, bit = x >> 3, 1 << (x & 7)
                if taken[i] & bit:
                    continue
                taken[i] |= bit
                yield x

    def take(self, count: int) -> list[int]:
        words = self._words
        return [next(words) for _ in range(count)]


def lines_of(offsets: list[int]) -> str:
    """'0612345678' lines, newline-terminated."""
    if not offsets:
        return ""
    return "0" + "\n0".join(map(str, (FIRST + x for x in offsets))) + "\n"


@dataclass(frozen=True)
class Files:
    dnc_a: Path
    dnc_b: Path
    bloctel: Path
    pools: Path

    def all(self) -> list[Path]:
        return [self.dnc_a, self.dnc_b, self.bloctel, self.pools]


def files_for(workdir: Path, n: int) -> Files:
    stem = f"v{FORMAT}-{n}"
    return Files(
        workdir / f"dnc-{stem}-a.csv",
        workdir / f"dnc-{stem}-b.csv",
        workdir / f"bloctel-{stem}.csv",
        workdir / f"pools-{stem}.json",
    )


@contextmanager
def writing(path: Path) -> Iterator[TextIO]:
    """Write beside `path` and rename at the end: an interrupted run leaves no half file."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="ascii", newline="\n") as handle:
        yield handle
    partial.replace(path)


def generate_dnc(files: Files, n: int) -> None:
    """A: n numbers. B: A's first half interleaved with as many new numbers. Drawn from
    one stream, so the three groups (A and B, A only, B only) are disjoint by
    construction; their first POOL numbers, and POOL numbers of neither, go to the pools
    file for the reader."""
    draws = Draws(seed=1000 + n)
    common = n // 2
    pools: dict[str, list[int]] = {"both": [], "a_only": [], "b_only": [], "neither": []}
    with writing(files.dnc_a) as a, writing(files.dnc_b) as b:
        a.write("number\n")
        b.write("number\n")
        for start in range(0, common, CHUNK):
            size = min(CHUNK, common - start)
            shared, new = draws.take(size), draws.take(size)
            a.write(lines_of(shared))
            b.write(lines_of([x for pair in zip(shared, new, strict=True) for x in pair]))
            if start == 0:
                pools["both"], pools["b_only"] = shared[:POOL], new[:POOL]
        extra = draws.take(n - 2 * common)  # n odd: B needs one more new number
        b.write(lines_of(extra))
        for start in range(common, n, CHUNK):
            own = draws.take(min(CHUNK, n - start))
            a.write(lines_of(own))
            if start == common:
                pools["a_only"] = own[:POOL]
        pools["neither"] = draws.take(POOL)
    with writing(files.pools) as handle:
        json.dump(pools, handle)


def generate_bloctel(path: Path, n: int) -> None:
    draws = Draws(seed=2000 + n)
    rnd = random.Random(3000 + n)
    with writing(path) as out:
        out.write("telephone;identifiant;statut\n")
        for start in range(0, n, CHUNK):
            offsets = draws.take(min(CHUNK, n - start))
            out.write(
                "".join(
                    f"0{FIRST + x};R{start + i:07d};"
                    f"{'INSCRIT' if rnd.random() < LISTED_SHARE else 'OK'}\n"
                    for i, x in enumerate(offsets)
                )
            )


def prepare_files(workdir: Path, n: int, skip: bool) -> Files:
    workdir.mkdir(parents=True, exist_ok=True)
    files = files_for(workdir, n)
    missing = [p for p in files.all() if not p.exists()]
    if missing and skip:
        sys.exit(f"--skip-generate: missing {', '.join(map(str, missing))}")
    began = time.perf_counter()
    if files.dnc_a in missing or files.dnc_b in missing or files.pools in missing:
        generate_dnc(files, n)
    if files.bloctel in missing:
        generate_bloctel(files.bloctel, n)
    if missing:
        print(f"generated {len(missing)} file(s) in {time.perf_counter() - began:.1f} s")
    else:
        print(f"input files cached in {workdir}")
    return files


# --- Redis, configuration, machine ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinning_available() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(core: int | str, command: list[str], pin: bool) -> list[str]:
    return ["taskset", "-c", str(core), *command] if pin else command


@contextmanager
def redis_server(workdir: Path, maxmemory: str, pin: bool) -> Iterator[tuple[int, int]]:
    """(port, pid) of a private redis-server."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found")
    port = free_port()
    if port == 6379:
        port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]  # fmt: skip
    if maxmemory != "none":
        command += ["--maxmemory", maxmemory]
    process = subprocess.Popen(
        pinned(REDIS_CORE, command, pin), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        end = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > end or process.poll() is not None:
                sys.exit(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_config(workdir: Path, redis_url: str) -> Path:
    """The shipped configuration with its Redis URL replaced, the policy path made
    absolute and the audit journal moved into the work directory (the import does not
    write it). The rest, timeout included, is as shipped: what an operator runs."""
    text = SHIPPED_CONFIG.read_text(encoding="utf-8")
    for key, value in (("url", redis_url), ("file", str(POLICY)), ("dir", str(workdir / "audit"))):
        text, count = re.subn(
            rf"^{key} = .*$", f"{key} = {json.dumps(value)}", text, count=1, flags=re.M
        )
        assert count == 1, key
    data = tomllib.loads(text)
    assert data["redis"]["url"] == redis_url and data["policy"]["file"] == str(POLICY)
    path = workdir / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def code_version() -> str:
    """The commit measured, and a digest of src/ when it differs from that commit."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown commit"
    if not git("status", "--porcelain", "--", "src"):
        return f"commit {head}"
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".lua"):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return f"commit {head} with uncommitted changes in src/ (sha256 {digest.hexdigest()[:12]})"


def machine() -> dict[str, str]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
                break
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "code": code_version(),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": version,
        "load": load,
    }


# --- the ping process ---------------------------------------------------------------------


def ping_loop(port: int, stop: EventType, out: Connection) -> None:
    """PING every millisecond on one connection until `stop`; send back the latencies
    (seconds) and when each was sent (time.monotonic, shared by every process)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = array("d")
    sent_at = array("d")
    tick = time.monotonic()
    while not stop.is_set():
        began = time.monotonic()
        sock.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            reply += chunk
        latencies.append(time.monotonic() - began)
        sent_at.append(began)
        tick += 0.001
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()
    sock.close()
    out.send((latencies.tobytes(), sent_at.tobytes()))
    out.close()


@dataclass
class Pings:
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    def worst(self) -> tuple[float, float]:
        """(slowest answer, when it was sent)."""
        if not self.latencies:
            return 0.0, 0.0
        i = max(range(len(self.latencies)), key=self.latencies.__getitem__)
        return self.latencies[i], self.sent_at[i]


class Pinger:
    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._ours, theirs = context.Pipe(duplex=False)
        self._process = context.Process(
            target=ping_loop, args=(port, self._stop, theirs), daemon=True
        )
        self._process.start()
        theirs.close()

    def finish(self) -> Pings:
        self._stop.set()
        latencies, sent_at = self._ours.recv()
        self._process.join(10)
        pings = Pings()
        pings.latencies = array("d", latencies).tolist()
        pings.sent_at = array("d", sent_at).tolist()
        return pings


# --- one import ---------------------------------------------------------------------------


def dialguard_command() -> str:
    for candidate in (Path(sys.executable).with_name("dialguard"), ROOT / ".venv/bin/dialguard"):
        if candidate.exists():
            return str(candidate)
    sys.exit("dialguard command not found (run with .venv/bin/python)")


def run_queue_s(pid: int) -> float:
    """Seconds `pid` has spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_kb(pid: int) -> int:
    """VmHWM of a running process: its peak resident set since its last exec."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    started: float
    log: Path
    command: list[str]
    code: int | None = None
    wall: float = 0.0
    max_rss_kb: int = 0
    cpu_s: float = 0.0
    waited_s: float = 0.0  # runnable but off-CPU (other processes on its core)

    def poll(self) -> bool:
        """True once the child has exited (its rusage then recorded)."""
        if self.code is not None:
            return True
        self.waited_s = run_queue_s(self.process.pid) or self.waited_s
        # Not ru_maxrss: it counts the pages the child shared with this process between
        # fork and exec (this process holds the generated numbers), not the importer's.
        self.max_rss_kb = max(self.max_rss_kb, peak_rss_kb(self.process.pid))
        pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.wall = time.monotonic() - self.started
        self.code = os.waitstatus_to_exitcode(status)
        self.process.returncode = self.code
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return True

    async def wait(self) -> None:
        while not self.poll():
            await asyncio.sleep(0.01)


def start_import(
    kind: str,
    path: Path,
    config: Path,
    workdir: Path,
    pin: bool,
    extra: list[str],
    cores: int | str = IMPORTER_CORE,
) -> Child:
    command = [dialguard_command(), "import", kind, str(path), "--replace", *extra,
               "--config", str(config)]  # fmt: skip
    env = {
        k: v for k, v in os.environ.items() if k not in ("DIALGUARD_REDIS_URL", "DIALGUARD_CONFIG")
    }
    log = workdir / f"import-{kind}-{path.stem}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            pinned(cores, command, pin),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return Child(process, time.monotonic(), log, command)


def check_child(child: Child) -> str:
    output = child.log.read_text(encoding="utf-8", errors="replace")
    if child.code != 0:
        sys.exit(f"import failed (exit {child.code}): {shlex.join(child.command)}\n{output}")
    return output


@dataclass
class ImportRun:
    kind: str
    rows: int
    wall_s: float
    own_s: float  # the importer's own timing (its summary line)
    own_rate: float
    max_rss_mb: float
    cpu_s: float
    waited_s: float  # the importer's time waiting for a CPU
    redis_cpu_s: float
    redis_waited_s: float  # Redis's time waiting for a CPU
    used_before: int
    used_after: int
    entries: int  # numbers the version holds (counted in Redis)
    version_bytes: int  # MEMORY USAGE of the version's keys
    buckets: int
    bitmaps: int
    worst_ping_ms: float
    slow: Slow
    summary: str

    @property
    def used_delta(self) -> int:
        return self.used_after - self.used_before


async def info(client: aioredis.Redis, section: str) -> dict[str, Any]:
    result: dict[str, Any] = await client.info(section)
    return result


async def redis_cpu(client: aioredis.Redis) -> float:
    cpu = await info(client, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def used_memory(client: aioredis.Redis) -> int:
    return int((await info(client, "memory"))["used_memory"])


async def in_force(client: aioredis.Redis, kind: str) -> list[str]:
    """The version(s) in force of `kind` (optout: newest first)."""
    return list((await Lists(client, KEYS).current(kind)).versions)


async def census(client: aioredis.Redis, kind: str, version: str) -> Census:
    """Count and measure one version (both parts of a registry result set)."""
    lists = Lists(client, KEYS)
    if kind != "optout":
        return await lists.census(kind, version)
    total = Census()
    for part in (LISTED, CLEAR):
        counted = await lists.census(kind, version, part)
        total.entries += counted.entries
        total.bytes += counted.bytes
        total.buckets += counted.buckets
        total.bitmaps += counted.bitmaps
    return total


SLOW_US = 5000  # SLOWLOG threshold: commands that held Redis this long


@dataclass
class Slow:
    """Redis's own SLOWLOG over one import: what held it, and for how long."""

    count: int = 0
    worst_ms: float = 0.0
    worst: str = ""
    total_ms: float = 0.0


async def slowlog_reset(client: aioredis.Redis) -> None:
    await client.config_set("slowlog-log-slower-than", SLOW_US)
    await client.config_set("slowlog-max-len", 100_000)
    await client.slowlog_reset()


async def slowlog(client: aioredis.Redis) -> Slow:
    entries: list[dict[str, Any]] = await client.slowlog_get(100_000)
    slow = Slow(count=len(entries))
    for entry in entries:
        ms = int(entry["duration"]) / 1000
        slow.total_ms += ms
        if ms > slow.worst_ms:
            command = entry["command"]
            text = command.decode(errors="replace") if isinstance(command, bytes) else command
            words = text.split()
            slow.worst_ms = ms
            # EVALSHA sha numkeys ...: the sha and the first two arguments name the call
            slow.worst = " ".join(w[:40] for w in words[:5]) + (
                f" ... ({len(words)} words logged)" if len(words) > 5 else ""
            )
    return slow


OWN_TIMING = re.compile(r"; ([\d.]+) s, ([\d,]+) rows/s")


async def run_import(
    client: aioredis.Redis,
    kind: str,
    path: Path,
    rows: int,
    context: Context,
    used_before: int,
    extra: list[str] = [],  # noqa: B006 - never mutated
) -> ImportRun:
    cpu_before = await redis_cpu(client)
    redis_waited = run_queue_s(context.redis_pid)
    await slowlog_reset(client)
    pinger = Pinger(context.port)
    child = start_import(kind, path, context.config, context.workdir, context.pin, extra)
    await child.wait()
    pings = pinger.finish()
    output = check_child(child)
    slow = await slowlog(client)
    cpu_after = await redis_cpu(client)
    used_after = await used_memory(client)
    listed = "optout" if kind == "bloctel" else "dnc"
    counted = await census(client, listed, (await in_force(client, listed))[0])
    timing = OWN_TIMING.search(output)
    own_s, own_rate = (
        (float(timing.group(1)), float(timing.group(2).replace(",", ""))) if timing else (0, 0)
    )
    return ImportRun(
        kind=kind,
        rows=rows,
        wall_s=child.wall,
        own_s=own_s,
        own_rate=own_rate,
        max_rss_mb=child.max_rss_kb / 1024,
        cpu_s=child.cpu_s,
        waited_s=child.waited_s,
        redis_cpu_s=cpu_after - cpu_before,
        redis_waited_s=run_queue_s(context.redis_pid) - redis_waited,
        used_before=used_before,
        used_after=used_after,
        entries=counted.entries,
        version_bytes=counted.bytes,
        buckets=counted.buckets,
        bitmaps=counted.bitmaps,
        worst_ping_ms=pings.worst()[0] * 1000,
        slow=slow,
        summary=output.strip().splitlines()[-1] if output.strip() else "",
    )


# --- lookups during a swap ------------------------------------------------------------------


@dataclass
class SwapRun:
    new_file: str
    reads: int = 0
    errors: int = 0
    partial: int = 0
    partial_examples: list[str] = field(default_factory=list)
    by_category: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    import_s: float = 0.0
    swap_seen_s: float | None = None  # first read of the new version, from the import's start
    reads_before: int = 0  # reads before the import started
    redis_us_per_read: float = 0.0  # Redis CPU per read, measured before the import
    reads_during: int = 0
    reads_after: int = 0  # after the importer exited
    worst_ping_ms: float = 0.0
    worst_ping_at_s: float = 0.0
    ping_p99_ms: float = 0.0
    pings: int = 0
    pings_over_10ms: int = 0
    importer: ImportRun | None = None

    def quantile_ms(self, q: float) -> float:
        return quantile(self.latencies, q) * 1000


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Checker:
    """Every answer must come from the old list whole or the new one whole, and once the
    new one has been seen, never the old one again."""

    def __init__(self, old_version: str, run: SwapRun) -> None:
        self.old = old_version
        self.run = run
        self.after = False
        self.started = False  # the importer has been started
        self.exited = False  # the importer has exited: the new list must be in force

    def check(self, category: str, listed: bool, version: str | None, at: float) -> None:
        old = listed and version == self.old
        new = listed and version != self.old
        # the state this answer shows: "before", "after", "either" or "" (impossible)
        if category == "both":
            state = "before" if old else "after" if new else ""
        elif category == "old_only":
            state = "before" if old else "after" if not listed else ""
        elif category == "new_only":
            state = "before" if not listed else "after" if new else ""
        else:  # neither
            state = "" if listed else "either"
        bad = (
            not state
            or (state == "before" and (self.after or self.exited))
            or (state == "after" and not self.started)
        )
        if state == "after" and not self.after:
            self.after = True
            self.run.swap_seen_s = at
        if bad:
            self.run.partial += 1
            if len(self.run.partial_examples) < 5:
                self.run.partial_examples.append(
                    f"{category}: listed={listed} version={version} (old {self.old}),"
                    f" after={self.after}, exited={self.exited}"
                )


async def swap_run(
    client: aioredis.Redis,
    store: Store,
    new_file: Path,
    pools: dict[str, list[Number]],
    rows: int,
    context: Context,
) -> SwapRun:
    """Import `new_file` over the list in force while reading facts one at a time."""
    # As `dialguard serve` does (serve.tune_gc): the pools of numbers live as long as the
    # run, and a full collection walking them would show as a slow read.
    tune_gc()
    run = SwapRun(new_file.name)
    old_version = (await in_force(client, "dnc"))[0]
    checker = Checker(old_version, run)
    names = list(pools)
    rnd = random.Random(7)
    used_before = await used_memory(client)
    cpu_before = await redis_cpu(client)
    redis_waited = run_queue_s(context.redis_pid)
    await slowlog_reset(client)
    pinger = Pinger(context.port)

    async def read(phase_started: float, record: bool) -> None:
        category = names[rnd.randrange(len(names))]
        pool = pools[category]
        number = pool[rnd.randrange(len(pool))]
        began = time.monotonic()
        try:
            facts = await store.facts(number, "ACME", datetime.now(UTC), 30)
        except Exception as exc:  # a failed read is counted, and the run goes on
            run.errors += 1
            if run.errors == 1:
                print(f"read failed: {exc!r}", file=sys.stderr)
            return
        elapsed = time.monotonic() - began
        if record:
            run.latencies.append(elapsed)
        run.reads += 1
        run.by_category[category] = run.by_category.get(category, 0) + 1
        dnc = facts.dnc
        checker.check(
            category, dnc is not None, dnc.list_version if dnc else None, began - phase_started
        )

    # Before the import: what one read costs Redis alone (INFO's CPU counters, µs-exact).
    idle_cpu = await redis_cpu(client)
    warm_until = time.monotonic() + 1.0
    while time.monotonic() < warm_until:
        await read(0.0, record=False)
        run.reads_before += 1
    run.redis_us_per_read = (await redis_cpu(client) - idle_cpu) / run.reads_before * 1e6
    child = start_import("dnc", new_file, context.config, context.workdir, context.pin, [])
    checker.started = True
    polled = time.monotonic()
    while True:
        await read(child.started, record=True)
        run.reads_during += 1
        now = time.monotonic()
        if now - polled > 0.01:
            polled = now
            if child.poll():
                break
    checker.exited = True
    settle_until = time.monotonic() + 0.5
    while time.monotonic() < settle_until:
        await read(child.started, record=False)
        run.reads_after += 1
    pings = pinger.finish()
    output = check_child(child)
    slow = await slowlog(client)
    run.import_s = child.wall
    during = [
        (latency, sent - child.started)
        for latency, sent in zip(pings.latencies, pings.sent_at, strict=True)
        if child.started <= sent <= child.started + child.wall
    ]
    if during:
        worst, worst_at = max(during)
        run.worst_ping_ms, run.worst_ping_at_s = worst * 1000, worst_at
        run.ping_p99_ms = quantile([d[0] for d in during], 0.99) * 1000
        run.pings = len(during)
        run.pings_over_10ms = sum(1 for d in during if d[0] > 0.010)
    timing = OWN_TIMING.search(output)
    counted = await census(client, "dnc", (await in_force(client, "dnc"))[0])
    run.importer = ImportRun(
        kind="dnc (swap)",
        rows=rows,
        wall_s=child.wall,
        own_s=float(timing.group(1)) if timing else 0.0,
        own_rate=float(timing.group(2).replace(",", "")) if timing else 0.0,
        max_rss_mb=child.max_rss_kb / 1024,
        cpu_s=child.cpu_s,
        waited_s=child.waited_s,
        redis_cpu_s=await redis_cpu(client) - cpu_before,
        redis_waited_s=run_queue_s(context.redis_pid) - redis_waited,
        used_before=used_before,
        used_after=await used_memory(client),
        entries=counted.entries,
        version_bytes=counted.bytes,
        buckets=counted.buckets,
        bitmaps=counted.bitmaps,
        worst_ping_ms=run.worst_ping_ms,
        slow=slow,
        summary=output.strip().splitlines()[-1] if output.strip() else "",
    )
    return run


def load_pools(path: Path, new_is_b: bool) -> dict[str, list[Number]]:
    raw: dict[str, list[int]] = json.loads(path.read_text(encoding="utf-8"))

    def numbers(name: str) -> list[Number]:
        return [normalise(f"0{FIRST + x}") for x in raw[name]]

    a_only, b_only = numbers("a_only"), numbers("b_only")
    return {
        "both": numbers("both"),
        "old_only": a_only if new_is_b else b_only,
        "new_only": b_only if new_is_b else a_only,
        "neither": numbers("neither"),
    }


# --- the whole run --------------------------------------------------------------------------


@dataclass
class Context:
    port: int
    redis_pid: int
    config: Path
    workdir: Path
    pin: bool


@dataclass
class Results:
    dnc: list[ImportRun] = field(default_factory=list)
    bloctel: list[ImportRun] = field(default_factory=list)
    swap: list[SwapRun] = field(default_factory=list)


async def measure(args: argparse.Namespace, files: Files, context: Context) -> Results:
    results = Results()
    n = args.numbers
    client = aioredis.Redis(host="127.0.0.1", port=context.port)
    store = Store(aioredis.Redis(host="127.0.0.1", port=context.port), PREFIX)
    try:
        if args.only in ("dnc", "all"):
            baseline = await used_memory(client)
            for r in range(args.runs):
                result = await run_import(client, "dnc", files.dnc_a, n, context, baseline)
                print_import(f"dnc run {r + 1}", result)
                results.dnc.append(result)
        if args.only in ("bloctel", "all"):
            baseline = await used_memory(client)
            checked = (date.today() - timedelta(days=3)).isoformat()
            for r in range(args.runs):
                result = await run_import(
                    client, "bloctel", files.bloctel, n, context, baseline,
                    ["--checked-at", checked],
                )  # fmt: skip
                print_import(f"bloctel run {r + 1}", result)
                results.bloctel.append(result)
        if args.only in ("swap", "all"):
            if not await in_force(client, "dnc"):
                print("swap: loading the first list (not measured)")
                await run_import(client, "dnc", files.dnc_a, n, context, 0)
            for r in range(args.runs):
                new_is_b = r % 2 == 0  # A is in force on even runs, B on odd ones
                new_file = files.dnc_b if new_is_b else files.dnc_a
                pools = load_pools(files.pools, new_is_b)
                swap = await swap_run(client, store, new_file, pools, n, context)
                print_swap(f"swap run {r + 1}", swap)
                results.swap.append(swap)
    finally:
        await store.close()
        await client.aclose()
    return results


# --- reports --------------------------------------------------------------------------------


def print_import(label: str, r: ImportRun) -> None:
    print(
        f"{label}: {r.rows:,} rows, wall {r.wall_s:.1f} s ({r.rows / r.wall_s:,.0f} rows/s),"
        f" importer's own {r.own_s:.1f} s ({r.own_rate:,.0f} rows/s), peak RSS"
        f" {r.max_rss_mb:.0f} MB, importer CPU {r.cpu_s:.1f} s (+{r.waited_s:.1f} s waiting for"
        f" a CPU), Redis CPU {r.redis_cpu_s:.1f} s (+{r.redis_waited_s:.1f} s waiting for a"
        f" CPU); used_memory +{r.used_delta / 2**20:.1f} MB ="
        f" {r.used_delta / r.rows:.2f} B/number; MEMORY USAGE {r.version_bytes / r.rows:.2f}"
        f" B/number ({r.entries:,} entries, {r.buckets:,} buckets, {r.bitmaps:,} bitmaps);"
        f" worst PING {r.worst_ping_ms:.1f} ms; SLOWLOG: {r.slow.count} commands over"
        f" {SLOW_US / 1000:.0f} ms ({r.slow.total_ms:.0f} ms in all), slowest"
        f" {r.slow.worst_ms:.1f} ms: {r.slow.worst}",
        flush=True,
    )
    print(f"  {r.summary}", flush=True)


def print_swap(label: str, s: SwapRun) -> None:
    seen = f"{s.swap_seen_s:.2f} s" if s.swap_seen_s is not None else "never"
    print(
        f"{label} ({s.new_file}): {len(s.latencies):,} reads during the import"
        f" ({s.reads:,} in all, {s.errors} errors), p50 {s.quantile_ms(0.5):.3f} ms,"
        f" p99 {s.quantile_ms(0.99):.3f} ms, max {s.quantile_ms(1.0):.2f} ms (Redis CPU"
        f" {s.redis_us_per_read:.0f} µs per read before the import);"
        f" partial reads {s.partial}; new list first seen at {seen} of the import's"
        f" {s.import_s:.1f} s; worst PING {s.worst_ping_ms:.1f} ms at {s.worst_ping_at_s:.1f} s"
        f" (p99 {s.ping_p99_ms:.2f} ms, {s.pings_over_10ms} of {s.pings:,} over 10 ms)",
        flush=True,
    )
    for example in s.partial_examples:
        print(f"  partial read: {example}")
    if s.importer is not None:
        slow = s.importer.slow
        i = s.importer
        print(
            f"  importer: peak RSS {i.max_rss_mb:.0f} MB, CPU {i.cpu_s:.1f} s (+{i.waited_s:.1f} s"
            f" waiting for a CPU); Redis CPU {i.redis_cpu_s:.1f} s (+{i.redis_waited_s:.1f} s"
            f" waiting for a CPU)"
        )
        print(
            f"  SLOWLOG: {slow.count} commands over {SLOW_US / 1000:.0f} ms"
            f" ({slow.total_ms:.0f} ms in all), slowest {slow.worst_ms:.1f} ms: {slow.worst}"
        )
        print(f"  {s.importer.summary}")


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def import_rows(kind: str, runs: list[ImportRun]) -> list[str]:
    if not runs:
        return []
    n = runs[0].rows
    mb = 2**20

    def row(measure: str, fn: Callable[[ImportRun], float], fmt: str) -> str:
        values = [fn(r) for r in runs]
        each = " / ".join(format(v, fmt) for v in values)
        median = format(med(values), fmt)
        return f"| {kind} | {measure} | **{median}** | {each} |"

    return [
        row("wall time, s (process start to exit)", lambda r: r.wall_s, ".1f"),
        row("rows/s (wall)", lambda r: n / r.wall_s, ",.0f"),
        row("rows/s (the importer's own figure)", lambda r: r.own_rate, ",.0f"),
        row("importer peak RSS, MB", lambda r: r.max_rss_mb, ".0f"),
        row("importer CPU, s", lambda r: r.cpu_s, ".1f"),
        row("importer waiting for a CPU (run queue), s", lambda r: r.waited_s, ".1f"),
        row("Redis CPU, s", lambda r: r.redis_cpu_s, ".1f"),
        row("Redis waiting for a CPU (run queue), s", lambda r: r.redis_waited_s, ".1f"),
        row("used_memory after − before, MB", lambda r: r.used_delta / mb, ".1f"),
        row("bytes per number (used_memory)", lambda r: r.used_delta / n, ".2f"),
        row("bytes per number (MEMORY USAGE of the version)", lambda r: r.version_bytes / n, ".2f"),
        row("entries in the version (counted in Redis)", lambda r: r.entries, ",.0f"),
        row("buckets", lambda r: r.buckets, ",.0f"),
        row("... of which bitmaps", lambda r: r.bitmaps, ",.0f"),
        row("worst PING during the import, ms", lambda r: r.worst_ping_ms, ".1f"),
        row(f"commands over {SLOW_US // 1000} ms (SLOWLOG)", lambda r: r.slow.count, ",.0f"),
        row("slowest command (SLOWLOG), ms", lambda r: r.slow.worst_ms, ".1f"),
    ]


def swap_rows(runs: list[SwapRun]) -> list[str]:
    if not runs:
        return []

    def row(measure: str, fn: Callable[[SwapRun], float], fmt: str) -> str:
        values = [fn(r) for r in runs]
        each = " / ".join(format(v, fmt) for v in values)
        return f"| swap | {measure} | **{format(med(values), fmt)}** | {each} |"

    return [
        row("reads during the import (one at a time)", lambda r: len(r.latencies), ",.0f"),
        row("Redis CPU per read, µs (before the import)", lambda r: r.redis_us_per_read, ".1f"),
        row("read latency p50, ms", lambda r: r.quantile_ms(0.5), ".3f"),
        row("read latency p99, ms", lambda r: r.quantile_ms(0.99), ".3f"),
        row("read latency max, ms", lambda r: r.quantile_ms(1.0), ".2f"),
        row("partial reads (must be 0)", lambda r: r.partial, ",.0f"),
        row("read errors", lambda r: r.errors, ",.0f"),
        row("import wall time, s", lambda r: r.import_s, ".1f"),
        row(
            "new list first read at, s after the import's start",
            lambda r: r.swap_seen_s if r.swap_seen_s is not None else -1,
            ".2f",
        ),
        row("worst Redis stall (PING every 1 ms), ms", lambda r: r.worst_ping_ms, ".1f"),
        row("... at, s after the import's start", lambda r: r.worst_ping_at_s, ".1f"),
        row("PING p99, ms", lambda r: r.ping_p99_ms, ".2f"),
        row("PINGs over 10 ms", lambda r: r.pings_over_10ms, ",.0f"),
        row(
            "slowest command (SLOWLOG), ms",
            lambda r: r.importer.slow.worst_ms if r.importer else 0.0,
            ".1f",
        ),
        row(
            "importer peak RSS, MB",
            lambda r: r.importer.max_rss_mb if r.importer else 0.0,
            ".0f",
        ),
        row("importer CPU, s", lambda r: r.importer.cpu_s if r.importer else 0.0, ".1f"),
        row(
            "importer waiting for a CPU, s",
            lambda r: r.importer.waited_s if r.importer else 0.0,
            ".1f",
        ),
        row("Redis CPU, s", lambda r: r.importer.redis_cpu_s if r.importer else 0.0, ".1f"),
        row(
            "Redis waiting for a CPU, s",
            lambda r: r.importer.redis_waited_s if r.importer else 0.0,
            ".1f",
        ),
        row(
            "rows/s (wall) while being read",
            lambda r: r.importer.rows / r.importer.wall_s if r.importer else 0.0,
            ",.0f",
        ),
    ]


def report(
    args: argparse.Namespace, results: Results, host: dict[str, str], pin: bool, began: datetime
) -> None:
    table = [
        f"| list | measure | median of {args.runs} | each run |",
        "|---|---|---|---|",
        *import_rows("dnc", results.dnc),
        *import_rows("bloctel", results.bloctel),
        *swap_rows(results.swap),
    ]
    print()
    print("\n".join(table))
    command = ".venv/bin/python bench/lists.py " + shlex.join(sys.argv[1:])
    pinning = (
        f"importer pinned to core {IMPORTER_CORE}; Redis, the reader and the PING process to"
        f" core {REDIS_CORE} (`taskset`)"
        if pin
        else "no pinning (taskset missing or a single core)"
    )
    n = args.numbers
    print("\n--- markdown for docs/benchmarks.md ---\n")
    print(f"## Imported lists at {n:,} numbers: import, memory, lookups during a swap\n")
    print(f"```sh\n{command.strip()}\n```\n")
    print(
        f"What it does (bench/lists.py): a private redis-server (no persistence, maxmemory"
        f" {args.redis_maxmemory}); `dialguard import dnc FILE --replace` of {n:,} random"
        f" distinct mobile numbers (06/07, `0612345678` lines, random order), `dialguard"
        f" import bloctel FILE --replace --checked-at <3 days ago>` of {n:,} registry lines"
        f" (~{LISTED_SHARE:.0%} INSCRIT), both through the real CLI with the shipped"
        f" configuration; then, with {n:,} numbers in force, `import dnc --replace` of a second"
        f" {n:,}-number file (half of it shared with the first) while the benchmark reads"
        f" facts through `Store.facts` one at a time (a quarter each: numbers on both lists,"
        f" old only, new only, neither) and checks every answer against the old and the new"
        f" list, and another process PINGs Redis every millisecond. {pinning}."
        f" Wall time includes the importer's start-up; RSS is the importer's peak (`VmHWM`).\n"
    )
    print(
        f"Machine: {host['nproc']} cores ({host['cpu']}), {host['memory']}, Linux"
        f" {host['kernel']}, Python {host['python']}, {host['redis']}; started"
        f" {began:%Y-%m-%d %H:%M} UTC, load average at the start {host['load']}; code:"
        f" {host['code']}.\n"
    )
    print("\n".join(table))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--numbers", type=int, default=10_000_000, help="rows per file")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dialguard-bench-lists",
        help="where the generated input files are cached",
    )
    parser.add_argument(
        "--skip-generate", action="store_true", help="fail instead of generating missing files"
    )
    parser.add_argument("--only", choices=["dnc", "bloctel", "swap", "all"], default="all")
    parser.add_argument("--runs", type=int, default=1, help="runs of each measure (median)")
    parser.add_argument(
        "--redis-maxmemory", default="none", help="redis-server --maxmemory (none: no limit)"
    )
    args = parser.parse_args()
    if args.numbers < 4 * POOL:
        parser.error(f"--numbers must be at least {4 * POOL}")
    return args


def main() -> None:
    args = arguments()
    began = datetime.now(UTC)
    host = machine()
    pin = pinning_available()
    if pin:
        os.sched_setaffinity(0, {REDIS_CORE})
    print(
        f"{began:%Y-%m-%d %H:%M:%S} UTC; {host['code']}; {host['nproc']} cores; {host['redis']};"
        f" load {host['load']}; pinning:"
        f" {'importer on core 0, Redis and the readers on core 1' if pin else 'none'}",
        flush=True,
    )
    files = prepare_files(args.workdir, args.numbers, args.skip_generate)
    with tempfile.TemporaryDirectory(prefix="dialguard-bench-lists-") as tmp:
        scratch = Path(tmp)
        with redis_server(scratch, args.redis_maxmemory, pin) as (port, pid):
            config = write_config(scratch, f"redis://127.0.0.1:{port}/0")
            context = Context(port, pid, config, scratch, pin)
            results = asyncio.run(measure(args, files, context))
    report(args, results, host, pin, began)
    failed = sum(s.partial + s.errors for s in results.swap)
    if failed:
        sys.exit(f"{failed} partial or failed read(s)")


if __name__ == "__main__":
    main()
