"""Floods and abuse against the real `dialguard serve`, with well-behaved sessions (the
protocol-faithful Asterisk peer, a fresh number each) measured before, during and after:
their answers and p99, the server's RSS and open files, records lost, time to recover.

    .venv/bin/pytest tests/reliability/test_floods.py -s            # short (make test)
    .venv/bin/pytest tests/reliability/test_floods.py -s -m long    # full size

The attacker runs in its own process (tests/reliability/attack.py). Each test prints
one `ROW |` line of docs/reliability.md's table.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.reliability.served import (
    Calls,
    Sample,
    Served,
    dialguard_serve,
    one_call,
    row,
    steady,
)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Size:
    rate: float  # well-behaved sessions a second
    before_s: float
    during_s: float
    after_s: float
    silent: int  # connections of the silent flood
    abusers: int  # connections of the other attacks
    ramp_s: float  # from the attacker's start to the measure


SHORT = Size(
    rate=100, before_s=0.5, during_s=2, after_s=0.5, silent=10_000, abusers=100, ramp_s=0.5
)
LONG = Size(rate=200, before_s=5, during_s=30, after_s=5, silent=10_000, abusers=500, ramp_s=2)


@dataclass
class Report:
    before: Calls
    during: Calls
    after: Calls
    samples: dict[str, Sample]
    peak: Sample
    recover_s: float
    attack: dict[str, int]
    lost: int


def attacker(
    mode: str, served: Served, connections: int, source: str | None
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.reliability.attack", mode,
               "--port", str(served.port), "--connections", str(connections)]  # fmt: skip
    if source:
        command += ["--source", source]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


async def flood(
    served: Served, mode: str, size: Size, connections: int, source: str | None = None
) -> Report:
    calls_before = await steady(served.port, size.rate, size.before_s)
    samples = {"before": served.sample()}
    attack = attacker(mode, served, connections, source)
    peak = samples["before"]
    try:
        await asyncio.sleep(size.ramp_s)  # the flood builds up

        async def watch() -> None:
            nonlocal peak
            while True:
                now = served.sample()
                peak = Sample(max(peak.rss_kib, now.rss_kib), max(peak.fds, now.fds))
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        calls_during = await steady(served.port, size.rate, size.during_s)
        samples["during"] = served.sample()
        watcher.cancel()
    finally:
        attack.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(attack.communicate, timeout=30)
    stopped = time.monotonic()
    probe = Calls()
    while probe.answered == 0 and time.monotonic() - stopped < 30:
        await one_call(served.port, probe)
    recover_s = time.monotonic() - stopped
    calls_after = await steady(served.port, size.rate, size.after_s)
    samples["after"] = served.sample()
    await asyncio.sleep(0.1)  # the last records' group commit
    ids = {record["id"] for record in served.records()}
    answered = [*calls_before.ids, *calls_during.ids, *probe.ids, *calls_after.ids]
    lost = sum(1 for decision_id in answered if decision_id not in ids)
    assert served.alive()
    return Report(
        calls_before,
        calls_during,
        calls_after,
        samples,
        peak,
        recover_s,
        json.loads(out.strip().splitlines()[-1]),
        lost,
    )


def print_row(attack: str, size: Size, report: Report) -> None:
    s, peak = report.samples, report.peak
    row(
        attack,
        f"{size.rate:.0f} calls/s",
        f"during: {report.during.got()}; p99 {report.before.quantile_ms(0.99)} /"
        f" {report.during.quantile_ms(0.99)} / {report.after.quantile_ms(0.99)} ms",
        report.lost,
        f"{report.recover_s:.2f} s",
        f"RSS {s['before'].rss_kib // 1024} / {peak.rss_kib // 1024} / "
        f"{s['after'].rss_kib // 1024} MiB, fds {s['before'].fds} / {peak.fds} / "
        f"{s['after'].fds}",
    )
    print(f"attack: {report.attack}", flush=True)


def assert_unharmed(report: Report, size: Size) -> None:
    """Every well-behaved call before and after answered normally; during, at most a
    few refused (none for most attacks); nothing lost; memory and files back down."""
    for calls, seconds in ((report.before, size.before_s), (report.after, size.after_s)):
        assert calls.answers == {"ALLOW NON_COMMERCIAL": round(size.rate * seconds)}, calls
    assert report.lost == 0
    assert report.recover_s < 2.0
    after, before = report.samples["after"], report.samples["before"]
    assert after.fds <= before.fds + 5, report.samples
    assert after.rss_kib <= before.rss_kib * 1.5 + 20_000, report.samples
    assert not math.isnan(report.during.quantile_ms(0.99))


def sizes() -> list[object]:
    return [
        pytest.param(SHORT, id="short"),
        pytest.param(LONG, id="long", marks=pytest.mark.long),
    ]


def raise_own_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.mark.parametrize("size", sizes())
async def test_silent_connections(clean_redis: RedisServer, tmp_path: Path, size: Size) -> None:
    """10,000 connections that never say a word, each re-opened a second after the
    server cuts it: beyond max_connections (4096) the oldest silent one past its
    deadline (300 ms) is cut to make room, so the real calls still get in."""
    raise_own_fd_limit()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    connections = min(size.silent, hard - 1000)
    async with dialguard_serve(tmp_path, clean_redis.url) as served:
        report = await flood(served, "silent", size, connections)
        print_row(f"{connections:,} silent connections", size, report)
        assert_unharmed(report, size)
        assert report.attack["open_max"] >= min(connections, 4096)
        assert report.peak.fds <= 4096 + 100  # the cap held
        # The real calls got in: at most a handful refused while the cap was full of
        # connections still within their deadline.
        assert report.during.failed <= 0.02 * size.rate * size.during_s, report.during
        refused = served.events("connection_refused")
        assert len(refused) <= 2 * max(1, math.ceil(size.during_s / 60))  # once a minute
        assert served.stop() == 0


@pytest.mark.parametrize("size", sizes())
async def test_endless_agi_blocks(clean_redis: RedisServer, tmp_path: Path, size: Size) -> None:
    async with dialguard_serve(tmp_path, clean_redis.url) as served:
        report = await flood(served, "endless-block", size, size.abusers)
        print_row(f"{size.abusers} endless agi_* blocks", size, report)
        assert_unharmed(report, size)
        assert report.during.answers == {"ALLOW NON_COMMERCIAL": size.rate * size.during_s}
        assert report.attack["closed_by_server"] > 0
        assert served.stop() == 0


@pytest.mark.parametrize("size", sizes())
async def test_interleaved_hangups(clean_redis: RedisServer, tmp_path: Path, size: Size) -> None:
    async with dialguard_serve(tmp_path, clean_redis.url) as served:
        abusers = size.abusers // 5  # each of their sessions is a real decision
        report = await flood(served, "hangups", size, abusers)
        print_row(f"{abusers} sessions with HANGUP floods", size, report)
        assert_unharmed(report, size)
        assert report.during.answers == {"ALLOW NON_COMMERCIAL": size.rate * size.during_s}
        # Every decision the abusers heard the start of has its record.
        attack_records = [r for r in served.records() if r["uniqueid"].startswith("attack.")]
        assert len(attack_records) >= report.attack["answered"] > 0
        assert served.stop() == 0


OUTSIDE = "127.0.0.2"


@pytest.mark.parametrize("size", sizes())
async def test_connections_from_outside_allow(
    clean_redis: RedisServer, tmp_path: Path, size: Size
) -> None:
    server: Mapping[str, object] = {"allow": ["127.0.0.1/32"]}
    async with dialguard_serve(tmp_path, clean_redis.url, server=server) as served:
        report = await flood(served, "outside", size, size.abusers, source=OUTSIDE)
        print_row(f"{size.abusers} connection loops from outside allow", size, report)
        assert_unharmed(report, size)
        assert report.during.answers == {"ALLOW NON_COMMERCIAL": size.rate * size.during_s}
        assert report.attack["bytes_received"] == 0  # not a byte of an answer
        assert report.attack["connects"] > size.abusers
        refused = served.events("connection_refused")
        assert [(e["cause"], e["peer"]) for e in refused] == [("not_allowed", OUTSIDE)]
        assert served.events("session_aborted") == []  # nothing of it was parsed
        assert not [r for r in served.records() if r["uniqueid"].startswith("attack.")]
        assert served.stop() == 0
    assert os.path.exists(tmp_path / "audit")
