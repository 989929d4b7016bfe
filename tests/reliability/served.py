"""The real `dialguard serve` in a subprocess, watched from outside, and a steady load of
well-behaved sessions (the protocol-faithful Asterisk peer) measured while something
else goes on: what the reliability tests report.

A subprocess, not the in-process harness: a flood's 10,000 sockets would otherwise share
one fd table with the server, and its RSS and open files are read from /proc as an
operator would read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.agi.asterisk_peer import run_session
from tests.journal import audit_records
from tests.redis_server import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

Record = dict[str, Any]


def toml_value(value: object) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them: same in TOML


def write_config(
    directory: Path, port: int, server: Mapping[str, object] | None = None, extra: str = ""
) -> Path:
    """The service as shipped (deadline 300 ms, session bound 5 s), its journal in
    `directory`, and two campaigns whose answers do not depend on the hour."""
    policy = ROOT / "config" / "policy" / "france.toml"
    settings = {"host": HOST, "port": port, **(server or {})}
    lines = "\n".join(f"{key} = {toml_value(value)}" for key, value in settings.items())
    path = directory / "dialguard.toml"
    path.write_text(
        f"""node = "reliability"
[redis]
url = "redis://127.0.0.1:1/0"  # replaced by DIALGUARD_REDIS_URL
[server]
{lines}
[audit]
dir = {toml_value(str(directory / "audit"))}
[policy]
file = {toml_value(str(policy))}
# Non-commercial: ALLOW at any hour (NON_COMMERCIAL), unless on the do-not-call list.
[campaigns.demo-survey]
principal = "ACME"
purpose = "non_commercial"
[campaigns.demo-open]
principal = "ACME"
purpose = "non_commercial"
fail_mode = "open"
"""
        + extra,
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class Sample:
    """What an operator sees of the process: resident memory and open files."""

    rss_kib: int
    fds: int


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    stderr: Path
    port: int
    directory: Path
    audit: Path  # the journal's directory

    @property
    def pid(self) -> int:
        return self.process.pid

    def sample(self) -> Sample:
        statm = Path(f"/proc/{self.pid}/statm").read_text().split()
        return Sample(int(statm[1]) * PAGE_KIB, len(os.listdir(f"/proc/{self.pid}/fd")))

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def log(self) -> list[Record]:
        entries = []
        for line in self.stderr.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def events(self, name: str) -> list[Record]:
        return [entry for entry in self.log() if entry.get("event") == name]

    def records(self) -> list[Record]:
        return audit_records(self.audit)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


@asynccontextmanager
async def dialguard_serve(
    directory: Path,
    redis_url: str,
    *,
    server: Mapping[str, object] | None = None,
    extra: str = "",
    nofile: int | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Served]:
    """`dialguard serve` (one worker) until the block ends. `nofile`: its open-file
    limit, soft and hard (so that it cannot raise it)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(directory, port, server, extra)
    environment = {
        **os.environ,
        "DIALGUARD_CONFIG": str(config),
        "DIALGUARD_REDIS_URL": redis_url,
        **(env or {}),
    }

    def limit() -> None:  # pragma: no cover - runs in the child
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    stderr_path = directory / "stderr.log"
    command = [str(Path(sys.executable).parent / "dialguard"), "serve", "--workers", "1"]
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=directory,
            start_new_session=True,
            preexec_fn=limit,
        )
    served = Served(process, stderr_path, port, directory, directory / "audit")
    try:
        await wait_until(lambda: bool(served.events("started")) or not served.alive(), 20)
        assert served.alive(), stderr_path.read_text()
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


# --- well-behaved sessions ------------------------------------------------------------------

_numbers = itertools.count(1)


def next_number() -> str:
    """A mobile number no earlier session of this run used (no frequency cap in the way)."""
    return f"07{next(_numbers) % 100_000_000:08d}"


@dataclass
class Calls:
    """Sessions of the protocol-faithful Asterisk peer: latencies and what they got."""

    latencies: list[float] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)  # "ALLOW NON_COMMERCIAL", ...
    failed: int = 0  # refused, closed without an answer, or out of time
    ids: list[str] = field(default_factory=list)  # DIALGUARD_ID of each answer
    # (monotonic start, what it got: "ALLOW NON_COMMERCIAL", ..., or "" for no answer)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def quantile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    @property
    def answered(self) -> int:
        return sum(self.answers.values())

    def normal_again(self, since: float, normal: str = "ALLOW NON_COMMERCIAL") -> float:
        """Seconds from `since` to the start of the first call after which every call
        got `normal` (nan if the last did not)."""
        ordered = sorted(self.timeline)
        if not ordered or ordered[-1][1] != normal:
            return float("nan")
        first = len(ordered) - 1
        while first > 0 and ordered[first - 1][1] == normal:
            first -= 1
        return max(0.0, ordered[first][0] - since)

    def got(self) -> str:
        parts = [f"{count} {answer}" for answer, count in sorted(self.answers.items())]
        return ", ".join(parts + ([f"{self.failed} no answer"] if self.failed else []))


async def one_call(
    port: int, calls: Calls, campaign: str = "demo-survey", number: str | None = None
) -> None:
    started = time.monotonic()
    try:
        result = await run_session(
            HOST,
            port,
            args=(number or next_number(), campaign),
            read_timeout=6.0,
            session_timeout=6.0,
        )
    except OSError:
        calls.failed += 1
        calls.timeline.append((started, ""))
        return
    variables = result.variables
    if result.dangerous or "DIALGUARD_RESULT" not in variables:
        calls.failed += 1
        calls.timeline.append((started, ""))
        return
    calls.latencies.append(result.elapsed)
    answer = f"{variables['DIALGUARD_RESULT']} {variables['DIALGUARD_REASON']}"
    calls.timeline.append((started, answer))
    calls.answers[answer] = calls.answers.get(answer, 0) + 1
    calls.ids.append(variables["DIALGUARD_ID"])


async def steady(
    port: int,
    rate: float,
    seconds: float,
    campaign: str = "demo-survey",
    stop: Callable[[], bool] = lambda: False,
) -> Calls:
    """`rate` sessions a second for `seconds` (or until `stop()`), each started on time
    whatever the earlier ones are doing (an open loop: a stalled server shows)."""
    calls = Calls()
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    for i in itertools.count():
        at = started + i / rate
        if at - started >= seconds or stop():
            break
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        task = asyncio.create_task(one_call(port, calls, campaign))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return calls


def row(*cells: object) -> None:
    """One row of docs/reliability.md's table, printed for `pytest -s`."""
    print("\nROW | " + " | ".join(str(cell) for cell in cells) + " |", flush=True)
