"""Replay benchmark: `dialguard audit replay` over a journal of N decision records.

    .venv/bin/python bench/replay.py build --records 1000000 --dir /tmp/dg-replay
    .venv/bin/python bench/replay.py run --dir /tmp/dg-replay [--runs 3] [--policy FILE]
        [--before SRC]   # interleaved with runs of another checkout's src/ (git worktree)

`build` writes decision records as the service writes them (`decision_record`, with the
facts snapshot) into day files: 20,000 real decisions of the shipped policy (random
mobile and overseas numbers, consents of random ages, do-not-call entries, refusals,
attempt counts 0-5, calls from 08:00 to 21:00 over ten weekdays, three campaigns, one with
caller IDs), repeated with fresh ids to N. Records are not hash-chained (replay does not
read the chain). `run` times the whole command (`python -m dialguard audit replay --dir DIR
--json --workers 2`, its start-up included) under a policy with a cap of 3, and prints
records/s; with `--before SRC`, alternately with that src/ (the code before a change).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

ROOT = Path(__file__).resolve().parent.parent

from dialguard import policy  # noqa: E402
from dialguard.audit.writer import decision_record  # noqa: E402
from dialguard.config import load_config  # noqa: E402
from dialguard.model import CallerId, CallRequest, Consent, DncEntry, Facts  # noqa: E402
from dialguard.numbers import normalise  # noqa: E402

PARIS = ZoneInfo("Europe/Paris")
FIRST_DAY = datetime(2026, 11, 16, tzinfo=PARIS)  # a Monday; ten weekdays from it
TEMPLATES = 20_000


def build(records: int, directory: Path) -> None:
    config = load_config(ROOT / "config" / "dialguard.toml", env={})
    rng = random.Random(7)
    campaigns = [config.campaigns[n] for n in ("demo-prospecting", "demo-press", "demo-dialer")]
    days = [
        FIRST_DAY + timedelta(days=d)
        for d in range(14)
        if (FIRST_DAY + timedelta(days=d)).weekday() < 5
    ]
    templates = []
    for i in range(TEMPLATES):
        campaign = rng.choice(campaigns)
        prefix = rng.choice(["06", "07", "06", "07", "0692", "0590"])
        raw = prefix + "".join(rng.choice("0123456789") for _ in range(10 - len(prefix)))
        number = normalise(raw)
        now = rng.choice(days) + timedelta(minutes=rng.randrange(8 * 60, 21 * 60))
        facts = Facts(
            dnc=DncEntry("asked", None, "7") if rng.random() < 0.02 else None,
            consent=(
                Consent(now - timedelta(days=rng.randrange(1, 400)), None, f"crm:{i}")
                if rng.random() < 0.8
                else None
            ),
            refused_at=now - timedelta(days=rng.randrange(1, 90)) if rng.random() < 0.03 else None,
            attempts_30d=rng.choice([0, 0, 0, 1, 1, 2, 3, 4, 5]),
        )
        callerid = rng.choice(["0948120042", "0147000000", "unknown"])
        request = CallRequest(raw, campaign.name, "Local/x", "1.1", callerid, "fastagi", "0")
        caller = CallerId.of(request) if campaign.checks_caller_id else None
        decision = policy.decide(campaign, number, facts, now, config.policy, caller=caller)
        record = decision_record(
            decision_id="", ts=now, node="bench", request=request, campaign=campaign,
            decision=decision, latency_us=250,
        )  # fmt: skip
        templates.append(record)
    templates.sort(key=lambda r: r["ts"])
    directory.mkdir(parents=True, exist_ok=True)
    per_template = -(-records // TEMPLATES)
    written = 0
    files: dict[str, list[bytes]] = {}
    for copy in range(per_template):
        for n, record in enumerate(templates):
            if written == records:
                break
            record = {**record, "id": f"{record['ts']:012x}{copy:08x}{n:06x}"}
            day = datetime.fromtimestamp(record["ts"] / 1000, ZoneInfo("UTC")).strftime("%Y-%m-%d")
            files.setdefault(day, []).append(orjson.dumps(record))
            written += 1
    for day, lines in files.items():
        (directory / f"audit-{day}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    size = sum(p.stat().st_size for p in directory.glob("audit-*.jsonl"))
    print(f"{written:,} records in {len(files)} files, {size / 1e6:,.0f} MB: {directory}")


def run(directory: Path, runs: int, policy_file: Path | None, before: Path | None) -> None:
    if policy_file is None:
        text = (ROOT / "config" / "policy" / "france.toml").read_text(encoding="utf-8")
        policy_file = Path(tempfile.mkdtemp()) / "cap3.toml"
        policy_file.write_text(text.replace("max_attempts = 4", "max_attempts = 3"))
    command = [
        sys.executable, "-m", "dialguard", "audit", "replay", "--policy", str(policy_file),
        "--dir", str(directory), "--json", "--examples", "0", "--workers", "2",
    ]  # fmt: skip
    sources = {"after": ROOT / "src"}
    if before is not None:
        sources = {"before": before, **sources}
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(runs):
        for name, src in sources.items():  # interleaved: the load changes under both alike
            load = os.getloadavg()[0]
            env = {**os.environ, "PYTHONPATH": str(src)}
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, check=True, env=env)
            took = time.perf_counter() - start
            times[name].append(took)
            report = orjson.loads(done.stdout)
            print(
                f"{name}: {took:.2f} s: {report['records']:,} records, {report['changed']:,} "
                f"would change, {report['records'] / took:,.0f} records/s (load {load:.2f})"
            )
    for name, taken in times.items():
        median = statistics.median(taken)
        print(f"{name}: median {median:.2f} s ({report['records'] / median:,.0f} records/s)")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--records", type=int, default=1_000_000)
    b.add_argument("--dir", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--policy", type=Path, default=None)
    r.add_argument("--before", type=Path, default=None, help="another checkout's src/")
    args = parser.parse_args()
    if args.command == "build":
        build(args.records, args.dir)
    else:
        run(args.dir, args.runs, args.policy, args.before)
