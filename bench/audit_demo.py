"""Make a supervisor's day of real audit records (docs/supervisors.md).

    PYTHONPATH=. .venv/bin/python bench/audit_demo.py var/demo-audit

Starts a private redis-server (never 6379), loads config/sample/, then takes 1,200
decisions through `Service.decide(record=True)` (the path every adapter takes, audit record
fsync'd) on Monday 2026-11-30, 08:00 to 21:00 in Paris, across the sample campaigns, and
records a few outcomes. The journal lands in the directory given.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from dialguard.audit import Journal
from dialguard.config import load_config
from dialguard.model import CallRequest
from dialguard.service import OutcomeKind, Service
from dialguard.store import Store
from tests.redis_server import running_redis

PARIS = ZoneInfo("Europe/Paris")
KNOWN = ["06 23 45 67 89", "07 56 78 90 12", "04 65 71 23 45", "06 12 34 56 78"]


async def day(directory: Path, url: str) -> None:
    config = replace(load_config(Path("config/dialguard.toml")), audit_dir=directory)
    store = Store.from_url(url, config.redis.prefix, config.redis.timeout_ms)
    rng = random.Random(20261130)
    pool = KNOWN + [f"06{rng.randrange(10**8):08d}" for _ in range(400)]
    campaigns = ["demo-prospecting"] * 5 + ["demo-press"] * 3 + ["demo-survey", "demo-energy"]
    start = datetime(2026, 11, 30, 8, 0, tzinfo=PARIS)
    moments = sorted(rng.uniform(0, 13 * 3600) for _ in range(1200))
    service = Service(config, store, Journal(directory))
    for offset in moments:
        now = start + timedelta(seconds=offset)
        request = CallRequest(rng.choice(pool), rng.choice(campaigns), adapter="fastagi")
        await service.decide(request, now=now, record=True)
    refusal = start + timedelta(hours=6, minutes=12)
    refused = CallRequest(pool[7], "demo-press", adapter="fastagi")
    await service.record_outcome(refused, OutcomeKind.REFUSED, now=refusal)
    dnc = start + timedelta(hours=7, minutes=3)
    unwanted = CallRequest(pool[9], "demo-press", adapter="fastagi")
    await service.record_outcome(unwanted, OutcomeKind.DO_NOT_CALL, now=dnc)
    await store.close()


def main() -> None:
    directory = Path(sys.argv[1])
    with running_redis() as server:
        env = {**os.environ, "DIALGUARD_REDIS_URL": server.url}
        dialguard = str(Path(sys.executable).with_name("dialguard"))
        for kind in ("dnc", "consent", "contract"):
            subprocess.run(
                [dialguard, "import", kind, f"config/sample/{kind}.csv"], env=env, check=True
            )
        bloctel = ["import", "bloctel", "config/sample/bloctel.csv", "--checked-at", "2026-11-20"]
        subprocess.run([dialguard, *bloctel], env=env, check=True)
        asyncio.run(day(directory, server.url))


if __name__ == "__main__":
    main()
