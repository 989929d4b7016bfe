"""Audit journal benchmarks (docs/benchmarks.md, "Audit journal").

    .venv/bin/python bench/audit_bench.py fsync
    .venv/bin/python bench/audit_bench.py throughput --seconds 5 --concurrency 1000
    .venv/bin/python bench/audit_bench.py latency --rate 2000 --seconds 10
    .venv/bin/python bench/audit_bench.py build --records 10000000 --dir /tmp/audit-10m
    .venv/bin/python bench/audit_bench.py search --dir /tmp/audit-10m --number +33612345678

- fsync: the disk's own floor: one 1.5 KB `write` + `fdatasync`, 2,000 times, 0.5 ms
  apart, no journal code.
- throughput: `concurrency` tasks append back to back through one `Journal` (durable group
  commit: one write and one fdatasync per batch); records/s and the mean batch size.
- latency: appends started at a fixed rate (open loop: a slow fsync cannot hide its queue),
  each timed from its scheduled start to `append` returning: what the journal adds to a
  decision.
- build: writes a journal of N records spread over days with the writer's own format code
  (`files.seal`, the same index entries) but without fsync, to make the 10-million-record
  corpus in minutes; then `search` times `dialguard audit search --number` on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from dialguard.audit import Journal

START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
RULES = [
    "number_valid", "emergency", "campaign_known", "sector_ban", "hours", "holiday",
    "internal_dnc", "optout", "consent", "contract", "recent_refusal", "frequency_cap",
]  # fmt: skip


def sample_record(n: int, ts: int, number: str) -> dict[str, Any]:
    """A decision record with the fields and the size of a real one (~1 KB)."""
    return {
        "id": f"{ts:012x}1a2b3c4d{n & 0xFFFFFF:06x}",
        "ts": ts,
        "node": "node-1",
        "kind": "decision",
        "result": "ALLOW" if n % 5 else "DENY",
        "reason": "CONSENT" if n % 5 else "OPTOUT_LISTED",
        "rules": [
            {"rule": rule, "outcome": "pass", "reason": None, "detail": ""} for rule in RULES
        ],
        "number_raw": "0" + number[3:],
        "number": number,
        "campaign": f"campaign-{n % 7}",
        "principal": "ACME",
        "purpose": "prospecting",
        "sector": "general",
        "local_time": "2026-11-30T09:00:00+01:00",
        "attempts_30d": n % 4,
        "evidence": {"consent": f"crm-{n}", "optout_list": "bloctel-2026-11-28"},
        "policy": {"name": "france", "hash": "9f2c1e0b7a6d5c4b"},
        "channel": f"PJSIP/trunk-{n:08x}",
        "uniqueid": f"{ts // 1000}.{n}",
        "callerid": "+33187654321",
        "adapter": "fastagi",
        "latency_us": 850,
        "degraded": "",
    }


def number_of(n: int) -> str:
    if n % 1_000_000 == 7:
        return "+33612345678"  # one number called once per million records: ten in 10 M
    return f"+336{(n * 2_654_435_761) % 100_000_000:08d}"  # spread over 10^8 mobiles


async def throughput(directory: Path, seconds: float, concurrency: int) -> None:
    journal = Journal(directory)
    ts = int(START.timestamp() * 1000)
    done = 0
    stop = time.perf_counter() + seconds

    async def appender(worker: int) -> None:
        nonlocal done
        n = worker
        while time.perf_counter() < stop:
            await journal.append(sample_record(n, ts, number_of(n)))
            done += 1
            n += concurrency

    await journal.append(sample_record(0, ts, number_of(0)))  # start the writer thread
    began = time.perf_counter()
    before = os.times()
    await asyncio.gather(*(appender(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - began
    after = os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    size = sum(p.stat().st_size for p in directory.glob("*.jsonl"))
    print(
        f"throughput: {done:,} durable records in {elapsed:.2f} s = {done / elapsed:,.0f}/s; "
        f"concurrency {concurrency}; {size / max(done, 1):.0f} bytes/record; "
        f"process CPU {cpu / done * 1e6:.1f} µs/record"
    )


async def latency(directory: Path, rate: int, seconds: float) -> None:
    journal = Journal(directory)
    ts = int(START.timestamp() * 1000)
    await journal.append(sample_record(0, ts, number_of(0)))
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    waits: list[float] = []  # from the append call: what a decision waits for
    late: list[float] = []  # from the schedule: the same plus the pacer's own lateness
    began = loop.time()

    async def one(n: int, due: float) -> None:
        called = time.perf_counter()
        await journal.append(sample_record(n, ts, number_of(n)))
        waits.append(time.perf_counter() - called)
        late.append(loop.time() - due)

    tasks = []
    for n in range(total):
        due = began + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(n, due)))
    await asyncio.gather(*tasks)
    for label, values in (("added to the call", waits), ("from the schedule", late)):
        ms = sorted(w * 1000 for w in values)
        print(
            f"latency at {rate:,}/s for {seconds:.0f} s ({total:,} appends), {label}: "
            f"p50 {statistics.median(ms):.3f} ms, p99 {ms[int(len(ms) * 0.99)]:.3f} ms, "
            f"p99.9 {ms[int(len(ms) * 0.999)]:.3f} ms, max {ms[-1]:.3f} ms"
        )


def fsync_floor(directory: Path) -> None:
    fd = os.open(directory / "floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = b"x" * 1518 + b"\n"
    ms = []
    for _ in range(2000):
        began = time.perf_counter()
        os.write(fd, line)
        os.fdatasync(fd)
        ms.append((time.perf_counter() - began) * 1000)
        time.sleep(0.0005)
    os.close(fd)
    ms.sort()
    print(
        f"write + fdatasync of 1.5 KB, 2,000 times: p50 {statistics.median(ms):.3f} ms, "
        f"p99 {ms[int(len(ms) * 0.99)]:.3f} ms, p99.9 {ms[int(len(ms) * 0.999)]:.3f} ms"
    )


def build(directory: Path, records: int, per_day: int) -> None:
    # Imported here: `throughput` and `latency` also run against the journal before the
    # chain (PYTHONPATH=<old checkout>/src), which has no `files` module.
    from dialguard.audit.files import GENESIS, HEAD_NAME, INDEX_ENTRY, Head, day_name, seal

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    prev = GENESIS
    base = int(START.timestamp() * 1000)
    name = ""
    size = 0
    began = time.perf_counter()
    for first in range(0, records, per_day):
        day = first // per_day
        name = day_name(base // 86_400_000 + day)
        step = 86_400_000 // per_day
        lines: list[bytes] = []
        entries: list[bytes] = []
        offset = 0
        for n in range(first, min(first + per_day, records)):
            number = number_of(n)
            ts = base + day * 86_400_000 + (n - first) * step
            line, prev = seal(orjson.dumps(sample_record(n, ts, number)), prev)
            entries.append(INDEX_ENTRY.pack(int(number[1:]), offset))
            offset += len(line)
            lines.append(line)
        (directory / name).write_bytes(b"".join(lines))
        (directory / name).with_suffix(".idx").write_bytes(b"".join(entries))
        size = offset
        print(f"{name}: {len(lines):,} records", file=sys.stderr)
    (directory / HEAD_NAME).write_bytes(Head(name, size, prev).encode())
    print(f"built {records:,} records in {time.perf_counter() - began:.0f} s")


def search(directory: Path, number: str, runs: int, what: str = "search") -> None:
    dialguard = Path(sys.executable).with_name("dialguard")
    if what == "history":
        command = [str(dialguard), "audit", "history", "--dir", str(directory), number]
    else:
        command = [str(dialguard), "audit", "search", "--dir", str(directory), "--number", number]
    walls = []
    found = 0
    for _ in range(runs):
        began = time.perf_counter()
        out = subprocess.run([*command, "--json"], check=True, capture_output=True).stdout
        walls.append(time.perf_counter() - began)
        found = len(out.splitlines())
    began = time.perf_counter()
    subprocess.run([str(dialguard), "--help"], check=True, capture_output=True)
    start_up = time.perf_counter() - began
    total = sum(p.stat().st_size for p in directory.glob("*.jsonl"))
    print(
        f"{what} {number}: {found} records; wall {min(walls):.3f} s best, "
        f"{statistics.median(walls):.3f} s median of {runs} (whole command; "
        f"`dialguard --help` alone {start_up:.3f} s); journal {total / 1e9:.1f} GB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("fsync")
    p.add_argument("--dir", type=Path, default=None)
    p = sub.add_parser("throughput")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--dir", type=Path, default=None)
    p = sub.add_parser("latency")
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--dir", type=Path, default=None)
    p = sub.add_parser("build")
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--per-day", type=int, default=1_000_000)
    p.add_argument("--dir", type=Path, required=True)
    for name in ("search", "history"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, required=True)
        p.add_argument("--number", default="+33612345678")
        p.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.what == "build":
        build(args.dir, args.records, args.per_day)
    elif args.what in ("search", "history"):
        search(args.dir, args.number, args.runs, args.what)
    else:
        with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
            if args.what == "fsync":
                fsync_floor(Path(scratch))
            elif args.what == "throughput":
                asyncio.run(throughput(Path(scratch), args.seconds, args.concurrency))
            else:
                asyncio.run(latency(Path(scratch), args.rate, args.seconds))


if __name__ == "__main__":
    main()
