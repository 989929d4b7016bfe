"""Scrub benchmark: `dialguard scrub` over a lead file of N leads, and `check` one by one.

    .venv/bin/python bench/scrub.py build --leads 1000000 --dir DIR
    flock BENCH_LOCK .venv/bin/python bench/scrub.py run --dir DIR \\
        [--runs 3] [--check-sample 100] [--decide-sample 20000]

`build` writes a lead file as a CRM exports one (id, names, phone, postcode, city, source;
numbers written five ways, 2 % of rows with a quoted city holding a comma, 1 % of numbers
invalid), its first 100,000 rows as a second file, and the lists of a call centre that has
worked these leads: a do-not-call list (5 % of the leads and 200,000 others), a registry
result set (40 % of the leads, a tenth of them listed), consents (50 %, given 1 to 400
days before, some expiring), contracts (0.5 %), and the live data: refusals (1 %, 1 to
90 days before), attempts (5 % of the leads, 1 to 5 in the last 30 days), live
do-not-call entries (0.5 %).

`run` starts a private redis-server (never 6379), loads the lists with `dialguard import
--replace` and the live data through the store, then per run: `dialguard scrub` of the
1 M file and of the 100 k file (each a fresh process, start-up included; wall time and
peak RSS, VmHWM), interleaved. The baseline, the same leads through `check` one by one:
`dialguard check NUMBER --campaign C --at AT --json` for a sample of leads (one process a
lead, as an operator would script it today), and `Service.decide` in one process for a
larger sample (the cheapest `check` could be without its start-up); both extrapolated to
the file's size. Nothing is counted by either (no --record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "config" / "dialguard.toml"
POLICY = ROOT / "config" / "policy" / "france.toml"
PARIS = ZoneInfo("Europe/Paris")
AT = "2026-12-07T10:30"  # a Monday, in the morning window
CAMPAIGN = "demo-prospecting"
SMALL = 100_000

from dialguard.config import load_config  # noqa: E402
from dialguard.model import CallRequest  # noqa: E402
from dialguard.numbers import normalise  # noqa: E402
from dialguard.service import Service  # noqa: E402
from dialguard.store import Store  # noqa: E402

CITIES = ["Paris", "Lyon", "Marseille", "Lille", "Nantes", "Rennes", "Dijon", "Metz"]
QUOTED = ['"Saint-Denis, La Réunion"', '"Fort-de-France, Martinique"']
NAMES = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand"]


def spelled(rng: random.Random, digits: str) -> str:
    """A national number as CRMs write it."""
    form = rng.random()
    if form < 0.70:
        return digits
    if form < 0.85:
        return " ".join(digits[i : i + 2] for i in range(0, 10, 2))
    if form < 0.95:
        return "+33" + digits[1:]
    if form < 0.98:
        return "0033" + digits[1:]
    return ".".join(digits[i : i + 2] for i in range(0, 10, 2))


def build(count: int, directory: Path, seed: int) -> None:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    at = datetime.fromisoformat(AT).replace(tzinfo=PARIS)
    numbers: list[str] = []  # the national digits of each lead ("" invalid)
    seen: set[str] = set()
    with (
        (directory / "leads.csv").open("w", encoding="utf-8", newline="") as out,
        (directory / "leads-100k.csv").open("w", encoding="utf-8", newline="") as small,
    ):
        header = "id,first_name,last_name,phone,postcode,city,source\r\n"
        out.write(header)
        small.write(header)
        for i in range(count):
            kind = rng.random()
            if kind < 0.01:
                phone, digits = rng.choice(["12ab", "", "0612", "06 12 34", "n/a"]), ""
            else:
                while True:
                    if kind < 0.96:
                        prefix = rng.choice(["06", "07"])
                    elif kind < 0.98:
                        prefix = rng.choice(["0692", "0696", "0690", "0694"])
                    else:
                        prefix = rng.choice(["01", "02", "03", "04", "05", "09"])
                    digits = prefix + "".join(
                        rng.choice("0123456789") for _ in range(10 - len(prefix))
                    )
                    if digits not in seen and not digits.startswith(("070", "071")):
                        seen.add(digits)
                        break
                phone = spelled(rng, digits)
            numbers.append(digits)
            city = rng.choice(QUOTED) if rng.random() < 0.02 else rng.choice(CITIES)
            line = (
                f"{i + 1},{rng.choice(NAMES)},{rng.choice(NAMES)},{phone},"
                f"{rng.randrange(1000, 99000):05d},{city},crm-2026\r\n"
            )
            out.write(line)
            if i < SMALL:
                small.write(line)
    good = [n for n in numbers if n]
    with (directory / "dnc.csv").open("w", encoding="utf-8") as f:
        f.write("number\n")
        for n in good:
            if rng.random() < 0.05:
                f.write(n + "\n")
        for _ in range(200_000):
            f.write("06" + "".join(rng.choice("0123456789") for _ in range(8)) + "\n")
    with (directory / "bloctel.csv").open("w", encoding="utf-8") as f:
        f.write("Telephone;Identifiant;Statut\n")
        for i, n in enumerate(good):
            if rng.random() < 0.40:
                f.write(f"{n};B{i};{'INSCRIT' if rng.random() < 0.1 else 'OK'}\n")
    with (directory / "consent.csv").open("w", encoding="utf-8") as f:
        f.write("number,principal,given_at,expires_at,proof_ref\n")
        for i, n in enumerate(good):
            if rng.random() < 0.50:
                given = at - timedelta(days=rng.randrange(1, 400), seconds=rng.randrange(86400))
                expires = ""
                if rng.random() < 0.2:
                    expires = (given + timedelta(days=rng.randrange(30, 500))).isoformat()
                f.write(f"{n},ACME,{given.isoformat()},{expires},crm:{i}\n")
    with (directory / "contract.csv").open("w", encoding="utf-8") as f:
        f.write("number,principal,contract_id,sector,start,end\n")
        for i, n in enumerate(good):
            if rng.random() < 0.005:
                f.write(f"{n},ACME,K{i},energy_renovation,2026-01-01,\n")
    live: dict[str, list[Any]] = {"refusals": [], "attempts": [], "dnc": []}
    for n in good:
        draw = rng.random()
        if draw < 0.01:
            live["refusals"].append([n, rng.randrange(1, 90)])
        elif draw < 0.06:
            live["attempts"].append(
                [n, sorted(rng.randrange(1, 30 * 24 * 60) for _ in range(rng.randrange(1, 6)))]
            )
        elif draw < 0.065:
            live["dnc"].append(n)
    (directory / "live.json").write_text(json.dumps(live))
    print(f"{count:,} leads ({len(good):,} valid) in {directory / 'leads.csv'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found")
    port = free_port()
    if port == 6379:
        port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(workdir), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
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
            if time.monotonic() > end:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_config(workdir: Path, url: str) -> Path:
    text = SHIPPED_CONFIG.read_text(encoding="utf-8")
    for key, value in (("url", url), ("file", str(POLICY)), ("dir", str(workdir / "audit"))):
        text, count = re.subn(
            rf"^{key} = .*$", f"{key} = {json.dumps(value)}", text, count=1, flags=re.M
        )
        assert count == 1, key
    text = re.sub(r"^\[central\]\n(?:[a-z_]+ = .*\n)+", "", text, flags=re.M)
    tomllib.loads(text)
    path = workdir / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def dialguard() -> str:
    return str(Path(sys.executable).with_name("dialguard"))


def load(directory: Path, config: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    for kind, extra in (
        ("dnc", []),
        ("bloctel", ["--checked-at", "2026-11-20"]),
        ("consent", []),
        ("contract", []),
    ):
        started = time.perf_counter()
        subprocess.run(
            [dialguard(), "import", kind, str(directory / f"{kind}.csv"), "--replace", *extra,
             "--config", str(config)],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        print(f"loaded {kind} in {time.perf_counter() - started:.1f} s")
    asyncio.run(load_live(directory, config))


async def load_live(directory: Path, config_path: Path) -> None:
    config = load_config(config_path, env={})
    at = datetime.fromisoformat(AT).replace(tzinfo=PARIS)
    live = json.loads((directory / "live.json").read_text())
    store = Store.from_settings(config.redis, 30_000)
    try:
        for n, days in live["refusals"]:
            await store.record_refusal(normalise(n), "ACME", at - timedelta(days=days))
        tasks = []
        for n, minutes in live["attempts"]:
            number = normalise(n)
            for i, m in enumerate(minutes):
                when = at - timedelta(minutes=m)
                tasks.append(store.count_attempt(number, "ACME", when, 100, 30, f"b{n}{i}"))
            if len(tasks) > 2000:
                await asyncio.gather(*tasks)
                tasks = []
        await asyncio.gather(*tasks)
        for n in live["dnc"]:
            await store.dnc_add(normalise(n), "asked during a call", at - timedelta(days=3))
    finally:
        await store.close()
    print(
        f"live: {len(live['refusals']):,} refusals, {len(live['attempts']):,} numbers with"
        f" attempts, {len(live['dnc']):,} live do-not-call entries"
    )


def peak_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def redis_cpu(port: int) -> float:
    """Seconds of CPU the Redis server has used (user + system)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"INFO cpu\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") and b"used_cpu_user_main" not in data:
            data += sock.recv(65536)
    values = dict(line.split(":", 1) for line in data.decode().split("\r\n") if ":" in line)
    return float(values["used_cpu_user"]) + float(values["used_cpu_sys"])


def scrub(
    leads: Path, config: Path, workdir: Path, port: int
) -> tuple[float, int, dict[str, Any], float, float]:
    """(wall s, peak RSS kB, the --json summary, the scrub's CPU s, Redis's CPU s) of one
    `dialguard scrub`."""
    redis_before = redis_cpu(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    command = [
        dialguard(), "scrub", str(leads), "--campaign", CAMPAIGN, "--at", AT, "--json",
        "--out", str(workdir / "callable.csv"), "--report", str(workdir / "report.csv"),
        "--config", str(config),
    ]  # fmt: skip
    out = workdir / "scrub.out"
    started = time.perf_counter()
    with out.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        peak = 0
        while True:
            peak = max(peak, peak_rss_kb(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.01)
    took = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"scrub failed: {out.read_text()}")
    cpu = usage.ru_utime + usage.ru_stime
    return took, peak, json.loads(out.read_bytes()), cpu, redis_cpu(port) - redis_before


def numbers_of(leads: Path, count: int, rng: random.Random) -> list[str]:
    with leads.open(encoding="utf-8") as f:
        next(f)
        cells = [line.split(",")[3] for _, line in zip(range(SMALL), f, strict=False)]
    return rng.sample(cells, count)


def check_one_by_one(sample: list[str], config: Path) -> float:
    """Median seconds of one `dialguard check` process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    times = []
    for raw in sample:
        started = time.perf_counter()
        done = subprocess.run(
            [dialguard(), "check", raw, "--campaign", CAMPAIGN, "--at", AT, "--json",
             "--config", str(config)],
            capture_output=True, env=env,
        )  # fmt: skip
        times.append(time.perf_counter() - started)
        if done.returncode not in (0, 1):
            sys.exit(f"check failed: {done.stderr.decode()}")
    return statistics.median(times)


def decide_in_process(sample: list[str], config_path: Path) -> float:
    """Seconds per lead of Service.decide, one after the other, in one process."""
    config = load_config(config_path, env={})
    config = replace(config)
    at = datetime.fromisoformat(AT).replace(tzinfo=PARIS)

    async def main() -> float:
        store = Store.from_settings(config.redis)
        service = Service(config, store, None)
        try:
            started = time.perf_counter()
            for raw in sample:
                await service.decide(CallRequest(raw, CAMPAIGN), now=at)
            return (time.perf_counter() - started) / len(sample)
        finally:
            await store.close()

    return asyncio.run(main())


def run(directory: Path, runs: int, check_sample: int, decide_sample: int) -> None:
    leads, small = directory / "leads.csv", directory / "leads-100k.csv"
    count = sum(1 for _ in leads.open("rb")) - 1
    workdir = Path(tempfile.mkdtemp(prefix="dg-scrub-run-"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    print(f"commit {commit}{' (src modified)' if dirty else ''}; Python {sys.version.split()[0]}")
    print(f"{count:,} leads; at {AT}; load average {os.getloadavg()[0]:.2f}")
    try:
        with redis_server(workdir) as port:
            config = write_config(workdir, f"redis://127.0.0.1:{port}/0")
            load(directory, config)
            big: list[tuple[float, int]] = []
            little: list[tuple[float, int]] = []
            for i in range(runs):
                for name, path, into in (("1M", leads, big), ("100k", small, little)):
                    load_avg = os.getloadavg()[0]
                    took, rss, summary, cpu, redis = scrub(path, config, workdir, port)
                    into.append((took, rss))
                    print(
                        f"run {i + 1} {name}: {took:.2f} s, {summary['leads'] / took:,.0f}"
                        f" leads/s, peak RSS {rss / 1024:.1f} MB, CPU scrub {cpu:.1f} s"
                        f" + Redis {redis:.1f} s; {summary['callable']:,} callable,"
                        f" {summary['blocked']:,} blocked (load {load_avg:.2f})"
                    )
            reasons = {r["reason"]: r["leads"] for r in summary["by_reason"]}
            print(f"by reason (100k): {reasons}")
            rng = random.Random(11)
            per_check = check_one_by_one(numbers_of(small, check_sample, rng), config)
            per_decide = decide_in_process(numbers_of(small, decide_sample, rng), config)
            t_big = statistics.median(t for t, _ in big)
            rss_big = statistics.median(r for _, r in big) / 1024
            rss_small = statistics.median(r for _, r in little) / 1024
            t_small = statistics.median(t for t, _ in little)
            print(f"scrub 1M: median {t_big:.2f} s ({count / t_big:,.0f} leads/s)")
            print(f"scrub 100k: median {t_small:.2f} s")
            print(
                f"peak RSS: 1M {rss_big:.1f} MB, 100k {rss_small:.1f} MB"
                f" (+{rss_big - rss_small:.1f} MB)"
            )
            print(
                f"check, one process a lead: median {per_check * 1000:.0f} ms"
                f" ({check_sample} leads) -> {count:,} leads in {per_check * count / 3600:,.1f} h"
                f" ({per_check * count / t_big:,.0f} times the scrub)"
            )
            print(
                f"Service.decide in one process: {per_decide * 1e6:.0f} us a lead"
                f" ({decide_sample:,} leads) -> {count:,} in {per_decide * count:,.0f} s"
                f" ({per_decide * count / t_big:.1f} times the scrub)"
            )
            print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--leads", type=int, default=1_000_000)
    b.add_argument("--dir", type=Path, required=True)
    b.add_argument("--seed", type=int, default=7)
    r = sub.add_parser("run")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--check-sample", type=int, default=100)
    r.add_argument("--decide-sample", type=int, default=20_000)
    args = parser.parse_args()
    if args.command == "build":
        build(args.leads, args.dir, args.seed)
    else:
        run(args.dir, args.runs, args.check_sample, args.decide_sample)
