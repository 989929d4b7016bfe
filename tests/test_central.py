"""The central store and its shipper (docs/central.md), against SQLite and a real
PostgreSQL started by the tests (tests/postgres_server.py): every record stored once and
counted once, a shipper killed mid-batch or failing inside one, two nodes at once,
tampering caught at ingest and by `audit verify --central`, migrations run twice, and the
[central] configuration's one-line errors and password."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dialguard.audit.files import GENESIS, HEAD_NAME, Head, day_name, seal
from dialguard.central import CentralStore, CentralUnavailable, open_store
from dialguard.central.migrate import LATEST, MIGRATIONS
from dialguard.central.ship import Shipper
from dialguard.central.verify import verify_node
from dialguard.config import CentralSettings, central_settings, load_config
from tests.cli_runner import Result, run_dialguard
from tests.postgres_server import PostgresServer, running_postgres
from tests.redis_server import RedisServer
from tests.test_audit import record, write
from tests.test_reload import decide, make_site, serving, started
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
DAY1 = int(datetime(2026, 11, 30, 8, 0, tzinfo=UTC).timestamp() * 1000)  # 09:00 Paris
HOUR = 3_600_000
CONFIG = """
node = "n1"
[audit]
dir = "audit"
[policy]
file = "{policy}"
[central]
path = "central.sqlite3"
{extra}
[campaigns.demo-prospecting]
principal = "ACME"
purpose = "prospecting"
"""


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@dataclass
class Target:
    """A central store to ship into: the SQLite file of the configuration, or a fresh
    PostgreSQL database given through the environment (as an operator keeps the password
    out of the file)."""

    backend: str
    config: Path
    env: dict[str, str]
    postgres: PostgresServer | None = None
    url: str = ""

    @property
    def settings(self) -> CentralSettings:
        return central_settings(load_config(self.config, self.env), self.env)

    def open(self) -> CentralStore:
        return open_store(self.settings)

    def run(self, *args: str | Path) -> Result:
        return run_dialguard([*args, "--config", self.config], {"COLUMNS": "200", **self.env})

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """A statement of the test's own, outside dialguard's code."""
        if self.postgres is not None:
            with psycopg.connect(self.url, password=self.postgres.password, autocommit=True) as db:
                cursor = db.execute(query.encode())
                return cursor.fetchall() if cursor.description else []
        with contextlib.closing(sqlite3.connect(self.config.parent / "central.sqlite3")) as db:
            rows = db.execute(query).fetchall()
            db.commit()
            return rows

    def schema(self) -> str:
        if self.postgres is not None:
            return self.postgres.dump_schema(self.url)
        return "\n".join(
            str(row) for row in self.sql("SELECT type, name, sql FROM sqlite_master ORDER BY name")
        )


def write_config(directory: Path, extra: str = "") -> Path:
    path = directory / "dialguard.toml"
    policy = ROOT / "config" / "policy" / "france.toml"
    path.write_text(CONFIG.format(policy=policy, extra=extra), encoding="utf-8")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    config = write_config(tmp_path)
    if request.param == "sqlite":
        yield Target("sqlite", config, {})
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    with server.database() as url:
        env = {"DIALGUARD_CENTRAL_URL": url, "DIALGUARD_CENTRAL_PASSWORD": server.password}
        yield Target("postgresql", config, env, server, url)


# --- journals ----------------------------------------------------------------------------


def varied(count: int, start: int = DAY1, step_ms: int = 7 * 60_000) -> list[dict[str, Any]]:
    """Decisions of several campaigns, results and reasons, shadow-mode denials, outcomes
    and a do-not-call change, across days (UTC and Paris midnights)."""
    records = []
    campaigns = ["demo-prospecting", "demo-press", "demo-survey"]
    reasons = ["CONSENT", "OPTOUT_LISTED", "OUTSIDE_HOURS", "INTERNAL_DNC"]
    for n in range(count):
        ts = start + n * step_ms
        number = f"+3361234{n % 97:04d}"
        reason = reasons[n % len(reasons)]
        fields: dict[str, Any] = {
            "campaign": campaigns[n % 3],
            "result": "ALLOW" if reason == "CONSENT" else "DENY",
            "reason": reason,
        }
        if n % 11 == 0 and fields["result"] == "DENY":
            fields["mode"] = "shadow"
            fields["answer"] = {"result": "ALLOW", "reason": "SHADOW_" + reason}
        if n % 19 == 7:  # the fail mode decided (what the writer puts; "" otherwise)
            fields["degraded"] = "Redis unavailable: timeout; failing closed"
        elif n % 19 == 8:
            fields["degraded"] = ""
        if n % 13 == 5:
            fields = {"kind": "outcome", "outcome": "refused", "campaign": "demo-press"}
            fields |= {"result": None, "reason": None}
        if n % 17 == 3:
            fields = {"kind": "dnc-add", "why": "asked", "campaign": None}
            fields |= {"result": None, "reason": None}
        records.append(record(n, ts, number, **fields))
    return records


def build(directory: Path, count: int, node: str = "n1", per_day: int = 20_000) -> list[str]:
    """A large journal in the writer's format (files.seal, the head), without an fsync a
    record: minutes of the real writer in a second. Its ids, in chain order."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    prev = GENESIS
    ids = []
    name, size = "", 0
    for first in range(0, count, per_day):
        day = first // per_day
        name = day_name(DAY1 // 86_400_000 + day)
        lines = []
        for n in range(first, min(first + per_day, count)):
            ts = DAY1 + day * 86_400_000 + (n - first) * 1000
            item = record(n, ts, f"+336{n:08d}", node=node, campaign=f"c{n % 5}")
            item["id"] = f"{ts:012x}{node.encode().hex()[:8]:0>8}{n & 0xFFFFFF:06x}"
            ids.append(item["id"])
            line, prev = seal(json.dumps(item, separators=(",", ":")).encode(), prev)
            lines.append(line)
        (directory / name).write_bytes(b"".join(lines))
        size = (directory / name).stat().st_size
    (directory / HEAD_NAME).write_bytes(Head(name, size, prev).encode())
    return ids


def journal_lines(directory: Path) -> list[bytes]:
    return [
        line
        for path in sorted(directory.glob("audit-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def stored_ids(target: Target, node: str = "n1") -> list[str]:
    with target.open() as store:
        return [item[2] for item in store.chain(node)]


def rollup_total(target: Target, node: str | None = None) -> int:
    with target.open() as store:
        return sum(row.n for row in store.rollups(None, None, node=node))


def same_stats(a: dict[str, Any], b: dict[str, Any]) -> None:
    """`audit stats` figures equal; rows of equal counts may come in either order."""
    for key in ("by_reason",):
        a, b = {**a, key: sorted(map(str, a[key]))}, {**b, key: sorted(map(str, b[key]))}
    assert a == b


# --- shipping ---------------------------------------------------------------------------

ROLLUPS = "SELECT * FROM rollups ORDER BY hour, node, kind, campaign, result, reason"


def test_every_record_is_stored_once_with_rollups_equal_to_audit_stats(target: Target) -> None:
    journal = target.config.parent / "audit"
    write(journal, varied(400))
    shipped = target.run("audit", "ship")
    assert shipped.code == 0, shipped
    assert "400 records read" in shipped.out and "400 stored" in shipped.out

    with target.open() as store:
        chain = list(store.chain("n1"))
    assert [line for *_, line in chain] == journal_lines(journal)  # the bytes, in order
    for args in (
        [],
        ["--since", "2026-11-30", "--until", "2026-11-30"],
        ["--campaign", "demo-press"],
    ):
        local = target.run("audit", "stats", "--json", *args)
        central = target.run("audit", "stats", "--json", "--central", *args)
        assert local.code == central.code == 0, (local, central)
        same_stats(json.loads(local.out), json.loads(central.out))
    assert json.loads(central.out)["decisions"] > 0

    before = (
        target.sql("SELECT count(*) FROM records"),
        target.sql(ROLLUPS),
    )
    again = target.run("audit", "ship")
    assert again.code == 0 and "0 records read" in again.out, again
    assert (
        target.sql("SELECT count(*) FROM records"),
        target.sql(ROLLUPS),
    ) == before

    write(journal, varied(50, start=DAY1 + 3 * 86_400_000))  # the journal grows: only those
    more = target.run("audit", "ship")
    assert "50 records read" in more.out and "50 stored" in more.out, more
    same_stats(
        json.loads(target.run("audit", "stats", "--json").out),
        json.loads(target.run("audit", "stats", "--json", "--central").out),
    )
    verified = target.run("audit", "verify", "--central")
    assert verified.code == 0, verified
    assert verified.out.startswith("n1: intact: 450 records")


def test_a_record_sent_twice_is_stored_and_counted_once(target: Target) -> None:
    journal = target.config.parent / "audit"
    write(journal, varied(120))
    assert target.run("audit", "ship").code == 0
    counts = target.sql("SELECT sum(n), sum(shadowed) FROM rollups")
    # The cursor lost (a store restored beside its records, say): everything is sent again.
    target.sql("UPDATE cursors SET file = '', file_offset = 0, last_hash = ''")
    resent = target.run("audit", "ship")
    assert resent.code == 0, resent
    assert "120 records read" in resent.out and "0 stored, 120 already stored" in resent.out
    assert target.sql("SELECT count(*), count(DISTINCT id) FROM records") == [(120, 120)]
    assert target.sql("SELECT sum(n), sum(shadowed) FROM rollups") == counts
    assert target.sql("SELECT count(*) FROM chain_breaks") == [(0,)]


def test_a_shipper_killed_mid_batch_resumes_with_nothing_lost_or_doubled(target: Target) -> None:
    journal = target.config.parent / "audit"
    ids = build(journal, 60_000)
    env = {**os.environ, **target.env}
    command = [sys.executable, "-m", "dialguard", "audit", "ship", "--batch", "700",
               "--config", str(target.config)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def shipped() -> int:
        with (
            contextlib.suppress(CentralUnavailable, sqlite3.Error, psycopg.Error),
            target.open() as store,
        ):
            cursor = store.cursor("n1")
            return cursor.records if cursor is not None else 0
        return 0

    deadline = time.monotonic() + 60
    while shipped() < 5_000 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL, process.communicate()

    with target.open() as store:
        cursor = store.cursor("n1")
        assert cursor is not None
        kept = [item[2] for item in store.chain("n1")]
    assert 5_000 <= len(kept) < 60_000
    assert kept == ids[: len(kept)] and cursor.records == len(kept)  # a prefix, nothing more
    assert rollup_total(target) == len(kept)

    finished = target.run("audit", "ship")
    assert finished.code == 0, finished
    assert f"{60_000 - len(kept):,} stored, 0 already stored" in finished.out
    assert stored_ids(target) == ids
    assert target.sql("SELECT count(DISTINCT id) FROM records") == [(60_000,)]
    assert rollup_total(target) == 60_000
    assert target.run("audit", "verify", "--central").code == 0


def _fail_cursor_updates_past(target: Target, records: int) -> None:
    """A failure inside the transaction, after the batch's records and counts went in and
    before the cursor moves: the database itself refuses the cursor's update."""
    if target.backend == "sqlite":
        target.sql(
            "CREATE TRIGGER fail BEFORE UPDATE ON cursors WHEN new.records > "
            f"{records} BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    else:
        target.sql(
            "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF new.records > {records} THEN RAISE EXCEPTION 'injected failure'; END IF;"
            " RETURN new; END $$"
        )
        target.sql(
            "CREATE TRIGGER fail BEFORE UPDATE ON cursors FOR EACH ROW EXECUTE FUNCTION fail()"
        )


def test_a_failure_inside_a_batch_takes_the_whole_batch_back(target: Target) -> None:
    journal = target.config.parent / "audit"
    ids = build(journal, 1000)
    with target.open() as store:
        store.migrate()
        _fail_cursor_updates_past(target, 250)
        with pytest.raises(CentralUnavailable, match="injected failure"):
            Shipper(store, journal, "n1", batch=100).ship()
        assert [item[2] for item in store.chain("n1")] == ids[:200]  # two batches, not three
        assert sum(row.n for row in store.rollups(None, None)) == 200
    target.sql("DROP TRIGGER fail ON cursors" if target.postgres else "DROP TRIGGER fail")
    with target.open() as store:
        report = Shipper(store, journal, "n1", batch=100).ship()
        assert (report.stored, report.duplicates) == (800, 0)
        assert verify_node(store, "n1").intact
    assert stored_ids(target) == ids and rollup_total(target) == 1000


def test_two_nodes_ship_into_one_store_at_once(target: Target, tmp_path: Path) -> None:
    journals = {node: tmp_path / f"journal-{node}" for node in ("n1", "n2")}
    ids = {node: build(path, 20_000, node=node) for node, path in journals.items()}
    assert target.run("central", "migrate").code == 0
    env = {**os.environ, **target.env}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dialguard",
                "audit",
                "ship",
                "--dir",
                str(path),
                "--node",
                node,
                "--batch",
                "1000",
                "--config",
                str(target.config),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for node, path in journals.items()
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert b"20,000 stored" in out
    for node in journals:
        assert stored_ids(target, node) == ids[node]
        assert rollup_total(target, node) == 20_000
    verified = target.run("audit", "verify", "--central")
    assert verified.code == 0, verified
    assert [line.split(":")[0] for line in verified.out.splitlines()] == ["n1", "n2"]
    assert "n2: 20,000 records, intact at ingest" in target.run("central", "status").out


def _tamper(journal: Path, how: str) -> str:
    """Change the journal as someone covering their tracks would; the id it touched."""
    path = sorted(journal.glob("audit-*.jsonl"))[0]
    lines = path.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if i >= 20 and b'"result":"DENY"' in line)
    victim = json.loads(lines[at])
    if how == "edited":  # a field changed, the hash left as it was
        lines[at] = lines[at].replace(b'"result":"DENY"', b'"result":"ALLOW"', 1)
    elif how == "resealed":  # a field changed and the line's hash recomputed
        body = lines[at].replace(b'"result":"DENY"', b'"result":"ALLOW"', 1)
        body = body[: body.rindex(b',"prev":')] + b"}"
        lines[at], _ = seal(body, victim["prev"].encode())
        victim = json.loads(lines[at + 1])  # the next record no longer follows it
    elif how == "removed":
        del lines[at]
        victim = json.loads(lines[at])
    path.write_bytes(b"".join(lines))
    return str(victim["id"])


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("edited", "does not match its hash: edited"),
        ("resealed", "does not follow the record before it"),
        ("removed", "does not follow the record before it"),
    ],
)
def test_a_tampered_journal_is_flagged_at_ingest_and_by_verify(
    target: Target, tmp_path: Path, how: str, problem: str
) -> None:
    journal = tmp_path / "copy"
    write(journal, varied(60))
    record_id = _tamper(journal, how)
    shipped = target.run("audit", "ship", "--dir", journal, "--node", "n1")
    assert shipped.code == 3, shipped  # shipped, and flagged
    assert "1 chain breaks flagged" in shipped.out
    assert shipped.err.startswith(f"dialguard: chain break: {day_name(DAY1 // 86_400_000)} byte ")
    assert f"(id {record_id}): " in shipped.err and problem in shipped.err
    assert len(shipped.err.splitlines()) == 1
    stored = target.sql("SELECT count(*) FROM records")[0][0]
    assert stored == (59 if how == "removed" else 60)  # the tampered record is kept, flagged

    status = target.run("central", "status")
    assert "1 CHAIN BREAKS" in status.out and record_id in status.out
    verified = target.run("audit", "verify", "--central", "--node", "n1")
    assert verified.code == 3, verified
    assert verified.out.startswith("n1: NOT INTACT after ")
    assert record_id in verified.out and problem in verified.out
    as_json = json.loads(target.run("audit", "verify", "--central", "--json").out)
    assert (as_json["intact"], as_json["chain_breaks"]) == (False, 1)


def test_a_record_edited_in_the_store_is_caught_by_verify(target: Target) -> None:
    write(target.config.parent / "audit", varied(30))
    assert target.run("audit", "ship").code == 0
    assert target.run("audit", "verify", "--central").code == 0
    (victim,) = target.sql(
        "SELECT id FROM records WHERE result = 'DENY' ORDER BY ts LIMIT 1 OFFSET 3"
    )
    edit = """replace(line, '"result":"DENY"', '"result":"ALLOW"')"""
    if target.postgres:
        text = edit.replace("line", "convert_from(line, 'UTF8')", 1)
        edit = f"convert_to({text}, 'UTF8')"
    target.sql(f"UPDATE records SET line = {edit} WHERE id = '{victim[0]}'")
    verified = target.run("audit", "verify", "--central")
    assert verified.code == 3, verified
    assert f"(id {victim[0]}): its content does not match its hash: edited" in verified.out


def test_records_removed_from_the_store_are_caught_by_verify(target: Target) -> None:
    write(target.config.parent / "audit", varied(30))
    assert target.run("audit", "ship").code == 0
    target.sql("DELETE FROM records WHERE id = (SELECT max(id) FROM records)")
    verified = target.run("audit", "verify", "--central")
    assert verified.code == 3 and "records removed from the store" in verified.out, verified


# --- the schema -------------------------------------------------------------------------


def test_migrations_run_twice_change_nothing(target: Target) -> None:
    first = target.run("central", "migrate")
    assert first.code == 0, first
    applied = ", ".join(str(step.version) for step in MIGRATIONS)
    assert first.out.endswith(f"schema at version {LATEST} (applied now: {applied})\n"), first
    schema = target.schema()
    versions = target.sql("SELECT version, name FROM schema_version")
    second = target.run("central", "migrate")
    assert second.code == 0 and f"schema at version {LATEST} already; nothing to do" in second.out
    assert target.schema() == schema
    assert target.sql("SELECT version, name FROM schema_version") == versions
    assert "records_number" in schema and "rollups" in schema and "chain_breaks" in schema

    write(target.config.parent / "audit", varied(20))
    assert target.run("audit", "ship").code == 0  # a partition made, in PostgreSQL
    shipped_schema = target.schema()
    assert target.run("central", "migrate").code == 0
    assert target.schema() == shipped_schema


def test_version_2_counts_the_degraded_decisions_stored_before_it(target: Target) -> None:
    write(target.config.parent / "audit", varied(400))
    assert target.run("audit", "ship").code == 0
    rollups, marked = target.sql(ROLLUPS), target.sql(DEGRADED)
    assert 0 < len(marked) < 400 and sum(row[-1] for row in rollups) == len(marked)
    # The store as version 1 left it: no degraded column, no index of the events (nor
    # version 3's prunes and search indexes).
    for index in ("records_events", "records_principal", "records_node", "records_campaign_reason"):
        target.sql(f"DROP INDEX {index}")
    target.sql("DROP TABLE prunes")
    target.sql("ALTER TABLE records DROP COLUMN degraded")
    target.sql("ALTER TABLE rollups DROP COLUMN degraded")
    target.sql("DELETE FROM schema_version WHERE version >= 2")
    migrated = target.run("central", "migrate")
    assert migrated.code == 0 and "(applied now: 2, 3)" in migrated.out, migrated
    assert target.sql(ROLLUPS) == rollups and target.sql(DEGRADED) == marked


DEGRADED = "SELECT id FROM records WHERE degraded ORDER BY id"


def test_a_store_from_a_newer_dialguard_is_refused(target: Target) -> None:
    assert target.run("central", "migrate").code == 0
    target.sql(
        "INSERT INTO schema_version (version, name"
        + (
            ", applied_at) VALUES (99, 'future', 0)"
            if target.backend == "sqlite"
            else ") VALUES (99, 'future')"
        )
    )
    refused = target.run("audit", "ship")
    assert refused.code == 2, refused
    assert refused.err.startswith("dialguard: ") and len(refused.err.splitlines()) == 1
    assert f"schema is at version 99, newer than this dialguard knows ({LATEST})" in refused.err


def test_postgres_records_are_partitioned_by_month(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    with postgres.database() as url:
        env = {"DIALGUARD_CENTRAL_URL": url, "DIALGUARD_CENTRAL_PASSWORD": postgres.password}
        target = Target("postgresql", config, env, postgres, url)
        write(tmp_path / "audit", varied(10) + varied(10, start=DAY1 + 3 * 86_400_000))
        assert target.run("audit", "ship").code == 0
        partitions = target.sql(
            "SELECT c.relname, count(r.*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN records r ON r.tableoid = c.oid GROUP BY 1 ORDER BY 1"
        )
        assert partitions == [("records_2026_11", 10), ("records_2026_12", 10)]
        plan = target.sql(
            "EXPLAIN SELECT * FROM records WHERE number = '+33612340001' AND ts >= "
            f"{DAY1 + 2 * 86_400_000}"
        )
        assert "records_2026_11" not in str(plan) and "records_number" in str(plan).replace(
            "2026_12_number", "number"
        )


# --- the configuration ------------------------------------------------------------------


SECRET = "S3cr3tPw"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('url = "mysql://u@h/db"', "central.url: 'mysql://***@h/db' must start with postgresql://"),
        ("bach = 5", "central.bach: unknown key"),
        ('url = "postgresql://u@h/db"\n', "central.path: give either url (PostgreSQL) or path"),
        ('url = "postgresql://u@h:port/db"', "the port must be a number"),
        ("batch = 0", "central.batch: 0 must be positive"),
        ('ship = "yes"', "central.ship: 'yes' is not a bool"),
    ],
)
def test_a_bad_central_section_is_one_line(tmp_path: Path, extra: str, message: str) -> None:
    config = write_config(tmp_path, extra)
    if "path" not in message:
        config.write_text(config.read_text().replace('path = "central.sqlite3"\n', ""))
    result = run_dialguard(["central", "migrate", "--config", config])
    assert result.code == 1, result
    assert result.err == f"dialguard: {config}: {result.err.split(': ', 2)[2]}"
    assert message in result.err and len(result.err.splitlines()) == 1


def test_without_a_section_serve_ships_nothing_and_the_commands_use_the_data_directory(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('[central]\npath = "central.sqlite3"\n', ""))
    loaded = load_config(config, {})
    assert loaded.central is None
    assert central_settings(loaded, {}).path == tmp_path / "central.sqlite3"
    with_section = load_config(write_config(tmp_path, "batch = 10"), {})
    assert with_section.central is not None and with_section.central.ship
    assert with_section.central.batch == 10 and with_section.central.poll_ms == 500


@pytest.mark.parametrize(
    ("url", "code"),
    [
        (f"postgresql://dialguard:{SECRET}@127.0.0.1:1/db", 2),  # nothing listens on port 1
        (f"postgresql://dialguard:{SECRET}@127.0.0.1:port/db", 1),
        (f"postgresql://dialguard:{SECRET[:4]}/{SECRET[4:]}@127.0.0.1:1/db", 1),
        (f"mysql://dialguard:{SECRET}@127.0.0.1:1/db", 1),
    ],
)
def test_the_password_is_never_printed(tmp_path: Path, url: str, code: int) -> None:
    config = write_config(tmp_path)
    for args in (["central", "migrate"], ["audit", "ship"], ["audit", "verify", "--central"]):
        result = run_dialguard([*args, "--config", config], {"DIALGUARD_CENTRAL_URL": url})
        assert result.code == code, result
        assert len(result.err.splitlines()) == 1 and "Traceback" not in result.err
        for part in (SECRET, SECRET[:4], SECRET[4:]):
            assert part not in result.out + result.err
        assert "***" in result.err


def test_a_wrong_password_is_refused_and_not_shown(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    with postgres.database() as url:
        wrong = {"DIALGUARD_CENTRAL_URL": url, "DIALGUARD_CENTRAL_PASSWORD": SECRET}
        result = run_dialguard(["central", "migrate", "--config", config], wrong)
        assert result.code == 2, result
        assert "password authentication failed" in result.err and SECRET not in result.err
        in_url = url.replace("dialguard@", f"dialguard:{postgres.password}@")
        right = run_dialguard(["central", "migrate", "--config", config],
                              {"DIALGUARD_CENTRAL_URL": in_url})  # fmt: skip
        assert right.code == 0, right
        assert postgres.password not in right.out + right.err and "dialguard:***@" in right.out
        both = {"DIALGUARD_CENTRAL_URL": in_url, "DIALGUARD_CENTRAL_PASSWORD": SECRET}
        twice = run_dialguard(["central", "migrate", "--config", config], both)
        assert twice.code == 1 and "give it in one place only" in twice.err
        assert SECRET not in twice.err and postgres.password not in twice.err


# --- serve ------------------------------------------------------------------------------


async def test_serve_ships_as_it_decides_and_its_shipper_stops_with_it(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    site = make_site(tmp_path)
    site.edit_config("[policy]", '[central]\npath = "central.sqlite3"\npoll_ms = 100\n[policy]')
    with serving(site, clean_redis.url) as running:
        await started(running)
        await wait_until(lambda: bool(running.events("shipper_started")), 10)
        shipper = running.events("shipper_started")[0]["pid"]
        # Background work: never on a CPU a decision wants (cli/central.lowest_priority).
        await wait_until(lambda: os.sched_getscheduler(shipper) == os.SCHED_IDLE, 10)
        for _ in range(5):
            assert (await decide(site))["DIALGUARD_RESULT"] == "ALLOW"
        store = open_store(CentralSettings(tmp_path / "central.sqlite3"))

        def stored() -> int:
            with contextlib.suppress(CentralUnavailable):  # the shipper migrates it first
                cursor = store.cursor("reload-test")
                return cursor.records if cursor is not None else 0
            return 0

        await wait_until(lambda: stored() == 5, 10)
        ids = [item[2] for item in store.chain("reload-test")]
        assert ids == [r["id"] for r in site.records("decision")]
        store.close()
        running.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(running.process.wait, 15)
        assert running.process.returncode == 0
        assert not Path(f"/proc/{shipper}").exists() or _zombie(shipper)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    return True


def test_a_journal_without_records_ships_nothing(target: Target, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = target.run("audit", "ship", "--dir", tmp_path / "empty", "--node", "n9")
    assert result.code == 0 and "0 records read" in result.out, result
    missing = target.run("audit", "ship", "--dir", tmp_path / "nowhere", "--node", "n9")
    assert missing.code == 2 and "no such audit directory" in missing.err
    assert target.run("audit", "ship", "--dir", tmp_path / "empty").code == 1  # no --node
