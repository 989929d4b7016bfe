"""`bench/central.py console`: the console's real pages over HTTP on a loaded store, their
server time (Server-Timing `total`, and `db`) per page (docs/benchmarks.md, "Console
pages at 10 M records").

On a store `bench/central.py load` built (kept in `--store`): the targets are picked
first (numbers, decision ids), then the PostgreSQL cluster is started again (its buffers
empty; the OS's page cache is not dropped: the machine is shared), a private Redis takes
the changes of the last days (as `serve` would have applied them: Today's pending
changes are then what a site sees, not every change of three days), a user is made with
`dialguard console user add --password-stdin` in a temporary configuration pointed at
the store, `dialguard console --at <the corpus's last day, evening>` serves it, and each
page is requested over HTTP after a login: the first request (cold), then `--requests`
more, one at a time. Pages whose targets vary (a number of the long tail, a decision)
ask for a different one each time. "30 days of stats" is no page of the console (Today
shows one day): it is timed in-process, the console's own `stats.summary` over the
rollups of the last 30 days, as a page would call it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import quote, urlencode
from urllib.request import HTTPCookieProcessor, build_opener

from central_pages import DATABASE, PARIS, SQLITE_FILE, midnight, sql

from dialguard.central import CentralStore, open_store
from dialguard.central.stats import summary
from dialguard.changes import CHANGE_KINDS, change_in
from dialguard.config import CentralSettings, load_config
from dialguard.pending import PENDING_DAYS
from dialguard.store import Store
from tests.postgres_server import running_postgres
from tests.redis_server import free_port, running_redis
from tests.test_cli import toml_dumps

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "bench", "a bench password, long enough"
_TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
_CSRF = re.compile(rb'name="csrf" value="([^"]+)"')
_LINK = b'href="/decision/'  # a record listed on a page


@contextmanager
def cluster(backend: str, directory: Path) -> Iterator[tuple[CentralSettings, dict[str, str]]]:
    """The kept store's settings (PostgreSQL: its cluster started, stopped after) and the
    environment a dialguard process needs for it (the password)."""
    if backend == "sqlite":
        yield CentralSettings(directory / SQLITE_FILE), {}
        return
    with running_postgres(durable=True, kept=directory / "pg") as server:
        settings = CentralSettings(None, url=server.url(DATABASE), password=server.password)
        yield settings, {"DIALGUARD_CENTRAL_PASSWORD": server.password}


@dataclass
class Targets:
    day: date  # the corpus's last day: Today
    hot: str  # a number called ~1,000 times
    test_line: str  # called several thousand times
    tail: list[str]  # numbers of the long tail, one a request
    ids: list[str]  # decisions of the last 30 days, one a request


def pick(store: CentralStore, day: date, count: int) -> Targets:
    """Decisions spread over the last 30 days (one after each of `count` instants) and
    their numbers."""
    until = midnight(day + timedelta(days=1))
    month = midnight(day - timedelta(days=29))
    rng = random.Random(14)
    ids, tail = [], []
    for _ in range(count):
        instant = rng.randrange(month, until)
        rows = sql(
            store,
            "SELECT id, number FROM records WHERE ts >= ? AND kind = 'decision'"
            " AND number IS NOT NULL ORDER BY ts LIMIT 1",
            (instant,),
        )
        if rows:
            ids.append(str(rows[0][0]))
            tail.append(str(rows[0][1]))
    hot = f"+33{(7 * 7_919) % 900_000_000 + 100_000_000}"
    return Targets(day, hot, "+33612345678", tail, ids)


async def _apply_changes(store: CentralStore, redis_url: str, config_path: Path, since: int) -> int:
    """The changes of the last PENDING_DAYS applied to Redis, as the nodes' `serve` would
    have: Today's pending list is then the site's, not every change of three days."""
    config = load_config(config_path, {"DIALGUARD_REDIS_URL": redis_url})
    redis = Store.from_settings(config.redis)
    applied = 0
    try:
        for found in store.events(since, sorted(CHANGE_KINDS)):
            change = change_in(found.line)
            if change is not None:
                applied += await redis.apply(change)
    finally:
        await redis.close()
    return applied


def _config(workdir: Path, settings: CentralSettings) -> Path:
    data = tomllib.loads((ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8"))
    data["node"] = "console-bench"
    data["audit"]["dir"] = str(workdir / "audit")
    data["policy"]["file"] = str(ROOT / "config" / "policy" / "france.toml")
    data.pop("metrics", None)
    central = data["central"]
    central.pop("path", None)
    if settings.url:
        central["url"] = settings.url
    else:
        central["path"] = str(settings.path)
    path = workdir / "dialguard.toml"
    path.write_text(toml_dumps(data), encoding="utf-8")
    return path


class Client:
    """A browser enough for the console: cookies, the login form's CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = build_opener(HTTPCookieProcessor(CookieJar()))

    def login(self) -> None:
        with self.opener.open(self.base + "/login") as response:
            found = _CSRF.search(response.read())
        assert found is not None, "no CSRF token on the login page"
        form = {"user": USER, "password": PASSWORD, "csrf": found[1].decode(), "next": "/"}
        with self.opener.open(self.base + "/login", urlencode(form).encode()) as response:
            assert not response.url.startswith(self.base + "/login"), "the login failed"

    def get(self, path: str) -> tuple[dict[str, float], float, bytes]:
        """(Server-Timing in ms, the client's own ms, the body)."""
        began = time.perf_counter()
        with self.opener.open(self.base + path) as response:
            body = response.read()
            timing = response.headers.get("Server-Timing", "")
            assert response.status == 200, (path, response.status)
        elapsed = (time.perf_counter() - began) * 1000
        return {k: float(v) for k, v in _TIMING.findall(timing)}, elapsed, body


def _serve(config: Path, env: dict[str, str], port: int, at: datetime) -> subprocess.Popen[bytes]:
    dialguard = str(Path(sys.executable).with_name("dialguard"))
    added = subprocess.run(
        [dialguard, "console", "user", "add", USER, "--role", "compliance", "--password-stdin",
         "--config", str(config)],
        input=f"{PASSWORD}\n".encode(), env=env, capture_output=True,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr.decode()
    return subprocess.Popen(
        [dialguard, "console", "--config", str(config), "--port", str(port),
         "--at", at.isoformat()],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def console_pages(backend: str, directory: Path, requests: int) -> None:
    meta = json.loads((directory / f"corpus-{backend}.json").read_text(encoding="utf-8"))
    day = date.fromisoformat(meta["last_day"])
    with cluster(backend, directory) as (settings, _), open_store(settings) as store:
        targets = pick(store, day, requests + 1)
    # Started again: PostgreSQL's buffers hold nothing of what was picked.
    with (
        tempfile.TemporaryDirectory(prefix="dialguard-console-bench-") as tmp,
        running_redis() as redis_server,
        cluster(backend, directory) as (settings, extra),
    ):
        workdir = Path(tmp)
        config = _config(workdir, settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
        env |= extra | {"DIALGUARD_REDIS_URL": redis_server.url}
        at = datetime(day.year, day.month, day.day, 20, 30, tzinfo=PARIS)
        changes_since = int(at.timestamp() * 1000) - PENDING_DAYS * 86_400_000
        with open_store(settings) as store:
            applied = asyncio.run(_apply_changes(store, redis_server.url, config, changes_since))
        port = free_port()
        console = _serve(config, env, port, at)
        try:
            client = Client(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.login()
                    break
                except OSError:
                    if console.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            print(f"console {backend}: {meta['records']:,} records, Today = {day} (--at"
                  f" {at.isoformat()}), {applied:,} changes of the last {PENDING_DAYS} days"
                  f" applied to Redis; the first request, then {requests} more")  # fmt: skip
            print("| page | first total (db) ms | median total ms | p95 total ms | median db ms"
                  " | median redis ms | median client ms | KB | records linked |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|")
            for label, paths in _pages(targets, requests):
                _measure(client, label, paths)
        finally:
            console.terminate()
            console.wait(30)
        with open_store(settings) as store:
            _stats(store, day, requests)
        _stats_command(config, env, day)


def _pages(targets: Targets, requests: int) -> list[tuple[str, list[str]]]:
    n = requests + 1
    day = targets.day.isoformat()

    def number(value: str) -> str:
        return "/search?number=" + quote(value)

    return [
        ("Today (`/`)", ["/"] * n),
        ("Search: a number of the long tail (a new one each time)",
         [number(v) for v in targets.tail[:n]]),
        ("Search: a hot number (~1,000 records), page 1", [number(targets.hot)] * n),
        ("Search: a test line (~4,000 records), page 1", [number(targets.test_line)] * n),
        ("A decision, last 30 days (a new one each time)",
         [f"/decision/{i}" for i in targets.ids[:n]]),
        ("History of a hot number (its ~1,000 records)",
         ["/history?number=" + quote(targets.hot)] * n),
        ("Search: campaign and reason, the day",
         [f"/search?campaign=fibre-idf&reason=NO_CONSENT&since={day}&until={day}"] * n),
    ]  # fmt: skip


def _measure(client: Client, label: str, paths: list[str]) -> None:
    totals, dbs, redis, clients = [], [], [], []
    body = b""
    for path in paths:
        timing, elapsed, body = client.get(path)
        totals.append(timing["total"])
        dbs.append(timing.get("db", 0.0))
        redis.append(timing.get("redis", 0.0))
        clients.append(elapsed)
    rest = totals[1:]
    print(
        f"| {label} | {totals[0]:.1f} ({dbs[0]:.1f}) | {statistics.median(rest):.1f}"
        f" | {_percentile(rest, 0.95):.1f} | {statistics.median(dbs[1:]):.1f}"
        f" | {statistics.median(redis[1:]):.1f}"
        f" | {statistics.median(clients[1:]):.1f} | {len(body) / 1000:.0f}"
        f" | {body.count(_LINK)} |",
        flush=True,
    )


def _stats_command(config: Path, env: dict[str, str], day: date, runs: int = 5) -> None:
    """The same figures from the command line: `audit stats --central` for 30 days, the
    whole process (start-up included)."""
    dialguard = str(Path(sys.executable).with_name("dialguard"))
    since = (day - timedelta(days=29)).isoformat()
    command = [dialguard, "audit", "stats", "--central", "--json", "--config", str(config),
               "--since", since, "--until", day.isoformat()]  # fmt: skip
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True)
        times.append((time.perf_counter() - began) * 1000)
        assert done.returncode == 0, done.stderr.decode()
    decisions = json.loads(done.stdout)["decisions"]
    print(
        f"| `dialguard audit stats --central` for 30 days ({decisions:,} decisions), wall,"
        f" {runs} runs | {times[0]:.0f} | {statistics.median(times[1:]):.0f}"
        f" | {max(times[1:]):.0f} (max) | - | - | - | - | - |",
        flush=True,
    )


def _stats(store: CentralStore, day: date, requests: int) -> None:
    """30 days of stats: the console's `summary` over the last 30 days' rollups."""
    until = midnight(day + timedelta(days=1))
    month = midnight(day - timedelta(days=29))
    times = []
    decisions = 0
    for _ in range(requests + 1):
        began = time.perf_counter()
        decisions = int(summary(store, month, until, PARIS)["decisions"])
        times.append((time.perf_counter() - began) * 1000)
    rest = times[1:]
    print(
        f"| 30 days of stats (`stats.summary`, in-process; {decisions:,} decisions)"
        f" | {times[0]:.1f} | {statistics.median(rest):.1f} | {_percentile(rest, 0.95):.1f}"
        f" | - | - | - | - | - |",
        flush=True,
    )
