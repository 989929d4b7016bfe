"""Consents and contracts at scale: `dialguard import consent|contract --replace` time and
Redis memory, and every entry of a sample read back through the service's own script.

    .venv/bin/python bench/consents.py [--entries 10000000] [--only consent contract]
                                       [--proof-chars 16] [--runs 1] [--before SRC]

It starts a private redis-server on a free port (never 6379; no persistence), writes a
copy of config/dialguard.toml pointing at it (bench/lists.py's helpers), and imports
through the real CLI (a subprocess, pinned to core 0, or to `--importer-cores`; Redis and this
process on core 1):

- **consent**: N rows `number,principal,given_at,expires_at,proof_ref` of N random
  distinct French mobile numbers in random order; 90 % for ACME, the rest for three other
  principals; `given_at` an ISO 8601 instant with its offset (2026, to the second, as an
  API writes it), `expires_at` a date for half of them, empty for the rest; proof
  references of `--proof-chars` characters (`WEB-` and digits);
- **contract**: N rows `number,principal,contract_id,sector,start,end` (ids of 15
  characters, the four sectors, a start date, an end date for a third of them);
- **dnc** (`--baseline`): the consent file's N numbers as a do-not-call import, first:
  this machine's pace for the list that was already at scale.

Per import: wall time (process start to exit), the importer's CPU and peak RSS, Redis's
CPU, `used_memory` before and after (the previous version freed first: a `--replace` over
an empty list), the version's MEMORY USAGE (every bucket, its index, the overflow hash:
`lists status`'s census), its buckets and split buckets, the worst PING (every ms, from
another process) and SLOWLOG over 5 ms; then 2,000 entries of the file read back through
`Store.facts` (the decision's script) and compared with the file.

`--before SRC`: the same imports, first, with another checkout's src/ (`PYTHONPATH`; this
run's own code is the one this process imports, whatever its PYTHONPATH), at
`--before-entries` rows (the one-hash layout took ~12 s and ~121 bytes per 1 M consents),
as the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lists import (  # noqa: E402  (bench/lists.py, beside this file)
    CHUNK,
    FIRST,
    IMPORTER_CORE,
    REDIS_CORE,
    SLOW_US,
    Draws,
    Pinger,
    Slow,
    check_child,
    machine,
    pinning_available,
    redis_cpu,
    redis_server,
    slowlog,
    slowlog_reset,
    start_import,
    used_memory,
    write_config,
    writing,
)

from dialguard.model import Sector  # noqa: E402
from dialguard.numbers import normalise  # noqa: E402
from dialguard.serve import tune_gc  # noqa: E402
from dialguard.store import Store  # noqa: E402
from dialguard.store.keys import Keys  # noqa: E402
from dialguard.store.lists import Lists  # noqa: E402

PREFIX = "dialguard:"
KEYS = Keys(PREFIX)
PRINCIPALS = ["ACME"] * 27 + ["BETA", "GAMMA", "DELTA"]  # 90 % ACME
SAMPLE = 2_000  # entries read back after each import
FORMAT = 1  # bump when the generated files change


# --- input files ----------------------------------------------------------------------------


def dnc_path(workdir: Path, n: int, proof_chars: int) -> Path:
    """The consent file's numbers as a do-not-call file: the baseline of the same run."""
    return workdir / f"dnc-of-consent-v{FORMAT}-{n}-p{proof_chars}.csv"


def generate_dnc(path: Path, consents: Path) -> None:  # a few seconds: not reported
    with consents.open(encoding="ascii") as source, writing(path) as out:
        next(source)
        out.write("number\n")
        for line in source:
            out.write(line[: line.index(",")] + "\n")


def consent_path(workdir: Path, n: int, proof_chars: int) -> Path:
    return workdir / f"consent-v{FORMAT}-{n}-p{proof_chars}.csv"


def contract_path(workdir: Path, n: int) -> Path:
    return workdir / f"contract-v{FORMAT}-{n}.csv"


def generate_consents(path: Path, n: int, proof_chars: int) -> None:
    draws = Draws(seed=4000 + n)
    rnd = random.Random(5000 + n)
    days = [date(2026, 1, 1) + timedelta(days=d) for d in range(365)]
    digits = max(proof_chars - 4, 1)
    with writing(path) as out:
        out.write("number,principal,given_at,expires_at,proof_ref\n")
        for start in range(0, n, CHUNK):
            lines = []
            for i, x in enumerate(draws.take(min(CHUNK, n - start))):
                day = days[rnd.randrange(365)]
                second = rnd.randrange(8 * 3600, 20 * 3600)
                given = (
                    f"{day.isoformat()}T{second // 3600:02d}:{second // 60 % 60:02d}:"
                    f"{second % 60:02d}+01:00"
                )
                expires = day.replace(year=2029).isoformat() if rnd.random() < 0.5 else ""
                proof = f"WEB-{start + i:0{digits}d}"[:proof_chars]
                principal = PRINCIPALS[rnd.randrange(len(PRINCIPALS))]
                lines.append(f"0{FIRST + x},{principal},{given},{expires},{proof}\n")
            out.write("".join(lines))


def generate_contracts(path: Path, n: int) -> None:
    draws = Draws(seed=6000 + n)
    rnd = random.Random(7000 + n)
    sectors = [s.value for s in Sector]
    with writing(path) as out:
        out.write("number,principal,contract_id,sector,start,end\n")
        for start in range(0, n, CHUNK):
            lines = []
            for i, x in enumerate(draws.take(min(CHUNK, n - start))):
                first = date(2020, 1, 1) + timedelta(days=rnd.randrange(2500))
                end = (first + timedelta(days=365 * 3)).isoformat() if rnd.random() < 1 / 3 else ""
                sector = sectors[rnd.randrange(len(sectors))]
                lines.append(
                    f"0{FIRST + x},ACME,ACME-{start + i:010d},{sector},{first.isoformat()},{end}\n"
                )
            out.write("".join(lines))


def prepare(path: Path, make: Callable[[Path, int], None], n: int) -> None:
    if not path.exists():
        began = time.perf_counter()
        make(path, n)
        print(f"generated {path.name} in {time.perf_counter() - began:.1f} s", flush=True)


# --- one import -----------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    code: str  # "this" or "before"
    rows: int
    wall_s: float
    cpu_s: float
    waited_s: float
    max_rss_mb: float
    redis_cpu_s: float
    used_delta: int
    version_bytes: int
    entries: int
    buckets: int
    split: int
    worst_ping_ms: float
    slow: Slow
    checked: int
    wrong: int
    summary: str


async def free_all(client: aioredis.Redis) -> None:
    await client.flushall()
    # Freed memory goes back to the allocator at its pace: start each run from the same.
    await client.memory_purge()
    await asyncio.sleep(0.5)


def sample_rows(path: Path, n: int) -> list[list[str]]:
    """SAMPLE data lines of the file, spread over it."""
    wanted = set(random.Random(n).sample(range(n), min(SAMPLE, n)))
    rows = []
    with path.open(encoding="ascii") as handle:
        next(handle)
        for i, line in enumerate(handle):
            if i in wanted:
                rows.append(line.rstrip("\n").split(","))
    return rows


async def check_sample(store: Store, kind: str, rows: list[list[str]]) -> tuple[int, int]:
    """Read each sampled row back through the decision's script: (checked, wrong)."""
    wrong = 0
    now = datetime(2027, 6, 1, tzinfo=UTC)
    for fields in rows:
        facts = await store.facts(normalise(fields[0]), fields[1], now, 30)
        if kind == "consent":
            c = facts.consent
            given = datetime.fromisoformat(fields[2])
            ok = (
                c is not None
                and c.proof_ref == fields[4]
                and c.given_at == given
                and (c.expires_at is not None) == bool(fields[3])
            )
        else:
            ok = [x.contract_id for x in facts.contracts] == [fields[2]]
        wrong += not ok
    return len(rows), wrong


async def one_import(
    client: aioredis.Redis,
    kind: str,
    path: Path,
    rows: int,
    config: Path,
    workdir: Path,
    pin: bool,
    redis_pid: int,
    port: int,
    code: str,
    sample: list[list[str]],
    cores: str,
) -> Run:
    await free_all(client)
    used_before = await used_memory(client)
    cpu_before = await redis_cpu(client)
    await slowlog_reset(client)
    pinger = Pinger(port)
    child = start_import(kind, path, config, workdir, pin, [], cores)
    await child.wait()
    pings = pinger.finish()
    output = check_child(child)
    slow = await slowlog(client)
    redis_cpu_s = await redis_cpu(client) - cpu_before
    used_after = await used_memory(client)
    lists = Lists(client, KEYS)
    version = (await lists.current(kind)).versions[0]
    if kind == "dnc":  # the baseline: the same numbers as a do-not-call list
        census = await lists.census(kind, version)
        entries, used, buckets, split = census.entries, census.bytes, census.buckets, 0
        checked = wrong = 0
    elif code == "this":
        census = await lists.census(kind, version)
        entries, used, buckets, split = census.entries, census.bytes, census.buckets, census.bitmaps
        store = Store.from_url(f"redis://127.0.0.1:{port}/0", PREFIX, 5000)
        try:
            checked, wrong = await check_sample(store, kind, sample)
        finally:
            await store.close()
    else:  # the one-hash layout: one key per version
        entries, used = await lists.hash_census(KEYS.one_hash(kind, version))
        buckets = split = checked = wrong = 0
    del redis_pid
    return Run(
        kind=kind,
        code=code,
        rows=rows,
        wall_s=child.wall,
        cpu_s=child.cpu_s,
        waited_s=child.waited_s,
        max_rss_mb=child.max_rss_kb / 1024,
        redis_cpu_s=redis_cpu_s,
        used_delta=used_after - used_before,
        version_bytes=used,
        entries=entries,
        buckets=buckets,
        split=split,
        worst_ping_ms=pings.worst()[0] * 1000,
        slow=slow,
        checked=checked,
        wrong=wrong,
        summary=output.strip().splitlines()[-1] if output.strip() else "",
    )


def print_run(r: Run) -> None:
    print(
        f"{r.kind} ({r.code}): {r.rows:,} rows, wall {r.wall_s:.1f} s"
        f" ({r.rows / r.wall_s:,.0f} rows/s), importer CPU {r.cpu_s:.1f} s"
        f" (+{r.waited_s:.1f} s waiting), peak RSS {r.max_rss_mb:.0f} MB, Redis CPU"
        f" {r.redis_cpu_s:.1f} s; used_memory +{r.used_delta / 2**20:.1f} MB ="
        f" {r.used_delta / r.rows:.1f} B/entry; MEMORY USAGE {r.version_bytes / r.rows:.1f}"
        f" B/entry ({r.entries:,} entries, {r.buckets:,} buckets, {r.split:,} split); worst"
        f" PING {r.worst_ping_ms:.1f} ms; SLOWLOG {r.slow.count} over {SLOW_US // 1000} ms"
        f" (slowest {r.slow.worst_ms:.1f} ms); read back {r.checked:,}, wrong {r.wrong}",
        flush=True,
    )
    print(f"  {r.summary}", flush=True)


def table(runs: list[Run]) -> list[str]:
    lines = ["| list | code | rows | measure | median | each run |", "|---|---|---:|---|---|---|"]
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.kind, r.code, r.rows), []).append(r)
    measures: list[tuple[str, Callable[[Run], float], str]] = [
        ("wall time, s (process start to exit)", lambda r: r.wall_s, ".1f"),
        ("rows/s (wall)", lambda r: r.rows / r.wall_s, ",.0f"),
        ("importer CPU, s", lambda r: r.cpu_s, ".1f"),
        ("importer waiting for a CPU, s", lambda r: r.waited_s, ".1f"),
        ("importer peak RSS, MB", lambda r: r.max_rss_mb, ".0f"),
        ("Redis CPU, s", lambda r: r.redis_cpu_s, ".1f"),
        ("bytes per entry (used_memory)", lambda r: r.used_delta / r.rows, ".1f"),
        (
            "bytes per entry (MEMORY USAGE of the version)",
            lambda r: r.version_bytes / r.rows,
            ".1f",
        ),
        ("buckets (split)", lambda r: r.buckets, ",.0f"),
        ("worst PING during the import, ms", lambda r: r.worst_ping_ms, ".1f"),
        (f"commands over {SLOW_US // 1000} ms (SLOWLOG)", lambda r: r.slow.count, ",.0f"),
        ("entries read back wrong (of the sample)", lambda r: r.wrong, ",.0f"),
    ]
    for (kind, code, rows), group in groups.items():
        for name, fn, fmt in measures:
            values = [fn(r) for r in group]
            if name.startswith("buckets"):
                each = " / ".join(f"{r.buckets:,} ({r.split:,})" for r in group)
            else:
                each = " / ".join(format(v, fmt) for v in values)
            median = format(statistics.median(values), fmt)
            lines.append(f"| {kind} | {code} | {rows:,} | {name} | **{median}** | {each} |")
    return lines


async def measure(
    args: argparse.Namespace, port: int, pid: int, config: Path, work: Path
) -> list[Run]:
    tune_gc()
    pin = pinning_available()
    client = aioredis.Redis(port=port)
    runs: list[Run] = []
    paths = {
        "dnc": lambda n: dnc_path(args.workdir, n, args.proof_chars),
        "consent": lambda n: consent_path(args.workdir, n, args.proof_chars),
        "contract": lambda n: contract_path(args.workdir, n),
    }
    try:
        plans: list[tuple[str, int]] = []
        if args.before is not None:
            plans.append(("before", args.before_entries))
        plans.append(("this", args.entries))
        for _ in range(args.runs):
            for code, n in plans:
                for kind in (["dnc"] if code == "this" and args.baseline else []) + args.only:
                    path = paths[kind](n)
                    sample = sample_rows(path, n) if code == "this" and kind != "dnc" else []
                    # The importer is a child: the code it runs is on its PYTHONPATH.
                    saved = os.environ.get("PYTHONPATH")
                    if code == "before":
                        os.environ["PYTHONPATH"] = str(args.before)
                    try:
                        run = await one_import(
                            client,
                            kind,
                            path,
                            n,
                            config,
                            work,
                            pin,
                            pid,
                            port,
                            code,
                            sample,
                            args.importer_cores,
                        )
                    finally:
                        if saved is None:
                            os.environ.pop("PYTHONPATH", None)
                        else:
                            os.environ["PYTHONPATH"] = saved
                    print_run(run)
                    runs.append(run)
    finally:
        await client.aclose()
    return runs


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--entries", type=int, default=10_000_000, help="rows per file")
    parser.add_argument(
        "--only", nargs="+", choices=["consent", "contract"], default=["consent", "contract"]
    )
    parser.add_argument("--proof-chars", type=int, default=16, help="proof reference length")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--before", type=Path, default=None, help="another checkout's src/")
    parser.add_argument("--before-entries", type=int, default=1_000_000)
    parser.add_argument(
        "--importer-cores",
        default=str(IMPORTER_CORE),
        help="the cores the importer may run on (taskset -c): 0,1 lets it use the second"
        " core too (keeping its file, a thread, beside Redis)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first, the consent file's numbers as a do-not-call import (this machine's pace)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dialguard-bench-consents",
        help="where the generated input files are cached",
    )
    return parser.parse_args()


def main() -> None:
    args = arguments()
    began = datetime.now(UTC)
    host = machine()
    pin = pinning_available()
    if pin:
        os.sched_setaffinity(0, {REDIS_CORE})
    print(
        f"{began:%Y-%m-%d %H:%M:%S} UTC; {host['code']}; {host['nproc']} cores; {host['redis']};"
        f" load {host['load']}",
        flush=True,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = {args.entries} | ({args.before_entries} if args.before is not None else set())
    for n in sorted(sizes):
        if "consent" in args.only:
            prepare(
                consent_path(args.workdir, n, args.proof_chars),
                partial(generate_consents, proof_chars=args.proof_chars),
                n,
            )
        if "contract" in args.only:
            prepare(contract_path(args.workdir, n), generate_contracts, n)
        if args.baseline and n == args.entries:
            consents = consent_path(args.workdir, n, args.proof_chars)
            prepare(consents, partial(generate_consents, proof_chars=args.proof_chars), n)
            dnc = dnc_path(args.workdir, n, args.proof_chars)
            if not dnc.exists():
                generate_dnc(dnc, consents)
    with tempfile.TemporaryDirectory(prefix="dialguard-bench-consents-") as tmp:
        scratch = Path(tmp)
        with redis_server(scratch, "none", pin) as (port, pid):
            config = write_config(scratch, f"redis://127.0.0.1:{port}/0")
            runs = asyncio.run(measure(args, port, pid, config, scratch))
    lines = table(runs)
    command = ".venv/bin/python bench/consents.py " + shlex.join(sys.argv[1:])
    pinning = (
        f"importer pinned to cores {args.importer_cores}; Redis and the reader on core {REDIS_CORE}"
        if pin
        else "no pinning"
    )
    print("\n--- markdown for docs/benchmarks.md ---\n")
    print(f"```sh\n{command.strip()}\n```\n")
    print(
        f"Machine: {host['nproc']} cores ({host['cpu']}), {host['memory']}, Linux"
        f" {host['kernel']}, Python {host['python']}, {host['redis']}; started"
        f" {began:%Y-%m-%d %H:%M} UTC, load average at the start {host['load']}; {pinning};"
        f" code: {host['code']}.\n"
    )
    print("\n".join(lines))
    if any(r.wrong for r in runs):
        sys.exit("entries read back wrong")


if __name__ == "__main__":
    main()
