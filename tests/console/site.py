"""A call centre's day for the console's tests: real decisions in a real journal, shipped
into a real central store (SQLite), with the sample lists in a real Redis.

The decisions go through `Service.decide(record=True)`, the path every adapter takes, at
instants of the given day in Paris, across the sample campaigns, with numbers that are on
the sample lists (do-not-call, consents, a contract, the registry); a few are degraded
(the campaign's fail mode decided: Redis was "unavailable"), two outcomes are recorded,
and one do-not-call change is journalled that Redis never took (pending). Then `dialguard
audit ship` copies the journal into the store, as `serve` would.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dialguard.audit import Journal
from dialguard.audit.reader import stats
from dialguard.config import Config, load_config
from dialguard.model import CallRequest, Reason, Unavailable
from dialguard.service import OutcomeKind, Service, new_id
from dialguard.store import Store
from tests.cli_runner import Result, run_dialguard
from tests.journal import audit_records
from tests.test_cli import toml_dumps

ROOT = Path(__file__).resolve().parents[2]
PARIS = ZoneInfo("Europe/Paris")
# On the sample lists (config/sample/): a do-not-call, consents, a contract, the registry.
KNOWN = [
    "06 12 34 56 78",
    "06 23 45 67 89",
    "07 56 78 90 12",
    "04 65 71 23 45",
    "0612345679",
    "06 92 12 34 56",
]
PASSWORDS = {"alice": "alice's long password", "bob": "bob's long password!"}
PENDING_NUMBER = "+33699887766"


@dataclass
class Site:
    root: Path
    config_path: Path
    env: dict[str, str]
    day: date

    @property
    def config(self) -> Config:
        return load_config(self.config_path, self.env)

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    def run(self, *args: str | Path, stdin: str | None = None) -> Result:
        return run_dialguard([*args, "--config", self.config_path], self.env, stdin)

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.audit)

    def day_records(self) -> list[dict[str, Any]]:
        start, end = day_range(self.day)
        return [r for r in self.records() if start <= r["ts"] < end]

    def expected_stats(self) -> dict[str, Any]:
        return stats(iter(self.day_records()), PARIS)

    def journal_lines(self) -> list[bytes]:
        return [
            line
            for path in sorted(self.audit.glob("audit-*.jsonl"))
            for line in path.read_bytes().splitlines()
        ]


def working_day_after(day: date) -> date:
    """The first Tuesday, Wednesday or Thursday after `day` that is no public holiday in
    France: a day whose calls the rules do not all deny, and after the clock's today (the
    journal's files are days: a record is never written to an earlier day's file, so the
    tests' decisions must not predate the imports that the clock dates)."""
    import holidays

    day += timedelta(days=1)
    while day.weekday() not in (1, 2, 3) or day in holidays.country_holidays("FR", years=day.year):
        day += timedelta(days=1)
    return day


def day_range(day: date) -> tuple[int, int]:
    start = datetime.combine(day, time(), PARIS)
    end = datetime.combine(day + timedelta(days=1), time(), PARIS)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def make_site(directory: Path, redis_url: str, now: datetime, count: int = 180) -> Site:
    """The day of `now` (in Paris) up to `now`: `count` decisions and the rest."""
    data = tomllib.loads((ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8"))
    data["node"] = "n1"
    data["audit"]["dir"] = "audit"
    data["policy"]["file"] = str(ROOT / "config" / "policy" / "france.toml")
    data["central"]["path"] = "central.sqlite3"
    del data["metrics"]
    config_path = directory / "dialguard.toml"
    config_path.write_text(toml_dumps(data), encoding="utf-8")
    site = Site(
        directory, config_path, {"DIALGUARD_REDIS_URL": redis_url}, now.astimezone(PARIS).date()
    )
    for kind in ("dnc", "consent", "contract"):
        imported = site.run("import", kind, ROOT / "config" / "sample" / f"{kind}.csv")
        assert imported.code == 0, imported
    checked = (site.day - timedelta(days=3)).isoformat()
    bloctel = ROOT / "config" / "sample" / "bloctel.csv"
    imported = site.run("import", "bloctel", bloctel, "--checked-at", checked, "--ref", "test")
    assert imported.code == 0, imported
    asyncio.run(_day(site, redis_url, now, count))
    for name, password in PASSWORDS.items():
        role = "compliance" if name == "alice" else "viewer"
        added = run_with_stdin(site, password, "console", "user", "add", name, "--role", role)
        assert added.code == 0, added
    shipped = site.run("audit", "ship")
    assert shipped.code == 0, shipped
    return site


def run_with_stdin(site: Site, text: str, *args: str) -> Result:
    """`dialguard ARGS --password-stdin` with `text` on standard input."""
    return site.run(*args, "--password-stdin", stdin=text + "\n")


async def _day(site: Site, redis_url: str, now: datetime, count: int) -> None:
    config = replace(site.config, audit_dir=site.audit)
    store = Store.from_url(redis_url, config.redis.prefix, config.redis.timeout_ms)
    journal = Journal(site.audit)
    service = Service(config, store, journal)
    rng = random.Random(20261130)
    pool = KNOWN * 5 + [f"06{rng.randrange(10**8):08d}" for _ in range(40)] + ["0262 45 67 89"]
    campaigns = [name for name in config.campaigns if name != "demo-dialer"]
    # From 08:00 when the day has gone that far (the calls a call centre makes), else
    # from midnight.
    start = datetime.combine(site.day, time(), PARIS)
    if now - start > timedelta(hours=9):
        start += timedelta(hours=8)
    span = max((now - start).total_seconds() - 1, 1)
    moments = sorted(start + timedelta(seconds=rng.uniform(0, span)) for _ in range(count))
    for n, moment in enumerate(moments):
        request = CallRequest(
            rng.choice(pool),
            rng.choice(campaigns),
            channel=f"PJSIP/trunk-{n:08x}",
            uniqueid=f"{int(moment.timestamp())}.{n}",
            adapter="fastagi",
        )
        unavailable = None
        if n % 45 == 7:  # Redis "away": the campaign's fail mode decides (closed: DENY)
            unavailable = Unavailable(Reason.STORE_UNAVAILABLE, "Redis unavailable: test")
        await service.decide(request, now=moment, record=True, unavailable=unavailable)
    refused = CallRequest(KNOWN[1], "demo-press", adapter="fastagi")
    await service.record_outcome(refused, OutcomeKind.REFUSED, now=moments[count // 2])
    # A do-not-call the journal holds and Redis never took (it was down): pending.
    ts = int(moments[-1].timestamp() * 1000)
    await journal.append(
        {
            "id": new_id(moments[-1]),
            "ts": ts,
            "node": "n1",
            "kind": "dnc-add",
            "number": PENDING_NUMBER,
            "number_raw": PENDING_NUMBER,
            "principal": "",
            "why": "asked during the call",
            "operator": "tester",
            "adapter": "cli",
            "channel": "",
            "uniqueid": "",
        }
    )
    await service.aclose()
    await store.close()


# --- reading pages (the server's HTML, with the standard library) ----------------------

_TAG = re.compile(r"<[^>]+>")


def figure(html: str, name: str) -> str:
    found = re.search(rf'data-figure="{name}">([^<]*)<', html)
    assert found is not None, name
    return found.group(1)


def table(html: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells of the table with this id."""
    found = re.search(rf'<table[^>]*id="{table_id}".*?</table>', html, re.S)
    assert found is not None, table_id
    body = re.search(r"<tbody>(.*?)</tbody>", found.group(0), re.S)
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1) if body else "", re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        rows.append([unescape(_TAG.sub("", cell)).strip() for cell in cells])
    return rows


def unescape(text: str) -> str:
    import html

    return html.unescape(text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no CSRF field"
    return found.group(1)


def env_without_dialguard(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    return {**env, **extra}


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
