"""Retention of the central store (`[central] keep_days`, `dialguard central prune`), on
SQLite and on a real PostgreSQL (tests/test_central.py's fixtures): whole months go,
PostgreSQL's partitions are dropped, the chains still verify and say where they start
now, the counters stay, shipping goes on after, and a prune that cannot finish leaves a
store that verifies."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dialguard.audit.files import day_name
from dialguard.central import CentralUnavailable
from dialguard.central import postgres as postgres_store
from dialguard.central import sqlite as sqlite_store
from dialguard.central.retention import day_number, first_day_kept
from dialguard.central.ship import Shipper
from dialguard.central.verify import verify_node
from dialguard.config import load_config
from tests import test_central
from tests.postgres_server import PostgresServer
from tests.test_audit import record, write
from tests.test_central import ROLLUPS, Target, stored_ids, write_config

# test_central's fixtures: a store of each backend, the PostgreSQL server.
target = test_central.target
postgres = test_central.postgres

HOUR = 3_600_000
DAY = 86_400_000


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def days_of_calls(
    first: date, days: int, per_day: int = 3, node: str = "n1"
) -> list[dict[str, Any]]:
    """Decisions at 10:00, 11:00 ... UTC on each of `days` days from `first`."""
    records: list[dict[str, Any]] = []
    for day in range(days):
        noon = ms(datetime.combine(first + timedelta(days=day), datetime.min.time(), UTC))
        for n in range(per_day):
            ts = noon + (10 + n) * HOUR
            records.append(record(len(records), ts, f"+3361234{day % 100:02d}{n:02d}", node=node,
                                  campaign=f"c{n}"))  # fmt: skip
    return records


def hash_of(journal: Path, record_id: str) -> str:
    for path in sorted(journal.glob("audit-*.jsonl")):
        for line in path.read_bytes().splitlines():
            item = json.loads(line)
            if item["id"] == record_id:
                return str(item["hash"])
    raise AssertionError(record_id)


def test_the_months_before_keep_days_go_and_the_chain_verifies_from_where_it_now_starts(
    target: Target,
) -> None:
    today = datetime.now(UTC).date()
    first_kept = first_day_kept(today, 40)
    start = first_kept - timedelta(days=70)  # two or three months before, and after it
    journal = target.config.parent / "audit"
    records = days_of_calls(start, (today - start).days + 1)
    write(journal, records)
    assert target.run("audit", "ship").code == 0
    old = [
        r for r in records if r["ts"] < ms(datetime.combine(first_kept, datetime.min.time(), UTC))
    ]
    rollups = target.sql(ROLLUPS)
    config = target.config
    config.write_text(config.read_text().replace("[central]\n", "[central]\nkeep_days = 40\n"))

    dry = target.run("central", "prune", "--dry-run")
    assert dry.code == 0, dry
    assert dry.out.startswith(f"n1: would remove {len(old):,} records from the journal files"
                              f" before {day_name(day_number(first_kept))}")  # fmt: skip
    assert len(stored_ids(target)) == len(records)

    last_hash = hash_of(journal, old[-1]["id"])
    pruned = target.run("central", "prune")
    assert pruned.code == 0, pruned
    assert pruned.out.startswith(f"n1: removed {len(old):,} records"), pruned
    assert f"(hash {last_hash[:16]}...)" in pruned.out
    assert stored_ids(target) == [r["id"] for r in records[len(old) :]]
    assert target.sql(ROLLUPS) == rollups  # the counters stay (no personal data in them)
    if target.postgres is not None:
        months = {day_name(day_number(d))[6:13].replace("-", "_") for d in (start, first_kept)}
        assert "dropped the partitions records_" in pruned.out
        partitions = [row[0] for row in target.sql(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid ORDER BY 1"
        )]  # fmt: skip
        assert f"records_{min(months)}" not in partitions
        assert f"records_{first_kept.year:04d}_{first_kept.month:02d}" in partitions

    verified = target.run("audit", "verify", "--central")
    assert verified.code == 0, verified
    kept = len(records) - len(old)
    assert verified.out.startswith(
        f"n1: intact: {kept:,} records from {day_name(day_number(first_kept))} on"
        f" ({len(old):,} before it pruned; the chain starts after"
    ), verified
    (as_json,) = [json.loads(line) for line in target.run(
        "audit", "verify", "--central", "--json").out.splitlines()]  # fmt: skip
    assert as_json["intact"] and as_json["pruned"]["records"] == len(old)
    assert as_json["pruned"]["last_hash"] == last_hash
    status = target.run("central", "status", "--json")
    assert json.loads(status.out)["pruned_records"] == len(old)
    assert json.loads(status.out)["records"] == kept

    again = target.run("central", "prune")
    assert again.code == 0 and "nothing from before" in again.out, again

    # Shipping goes on from the cursor, and the chain still verifies.
    write(
        journal, [record(10_000 + n, ms(datetime.now(UTC)) + n, "+33611111111") for n in range(5)]
    )
    assert target.run("audit", "ship").code == 0
    verified = target.run("audit", "verify", "--central")
    assert verified.code == 0 and f"intact: {kept + 5:,} records from" in verified.out, verified


def test_a_record_written_just_after_midnight_stays_with_its_file(target: Target) -> None:
    """Its ts is in the month that goes, its journal file in the one kept: kept (in
    PostgreSQL, set aside while its month's partition is dropped, then put back)."""
    midnight = ms(datetime(2026, 11, 1, tzinfo=UTC))
    records = [record(n, midnight - DAY + n * HOUR, "+33612340001") for n in range(3)]
    records.append(record(3, midnight + 5, "+33612340002"))  # the writer's new file
    records.append(record(4, midnight - 10, "+33612340003"))  # stamped before, written after
    records += [record(5 + n, midnight + (n + 1) * HOUR, "+33612340004") for n in range(3)]
    journal = target.config.parent / "audit"
    write(journal, records)
    assert [p.name for p in sorted(journal.glob("*.jsonl"))] == [
        "audit-2026-10-31.jsonl",
        "audit-2026-11-01.jsonl",
    ]
    with target.open() as store:
        store.migrate()
        Shipper(store, journal, "n1").ship()
        pruning = store.prune(day_number(date(2026, 11, 1)), 1)
        assert [(p.node, p.records, p.last_file) for p in pruning.nodes] == [
            ("n1", 3, "audit-2026-10-31.jsonl")
        ]
        if target.postgres is not None:
            assert pruning.dropped == ["records_2026_10"]
        assert [item[2] for item in store.chain("n1")] == [r["id"] for r in records[3:]]
        assert verify_node(store, "n1").intact
        again = store.prune(day_number(date(2026, 11, 1)), 2)
        assert again.nodes == [] and again.dropped == []
        assert verify_node(store, "n1").intact


def test_a_node_whose_records_all_went_still_verifies(target: Target, tmp_path: Path) -> None:
    old = tmp_path / "old-node"
    write(old, days_of_calls(date(2026, 1, 5), 3, node="n2"))
    recent = target.config.parent / "audit"
    write(recent, days_of_calls(date(2026, 3, 2), 3))
    with target.open() as store:
        store.migrate()
        Shipper(store, old, "n2").ship()
        Shipper(store, recent, "n1").ship()
        pruning = store.prune(day_number(date(2026, 3, 1)), 1)
        assert [(p.node, p.records) for p in pruning.nodes] == [("n2", 9)]
        assert list(store.chain("n2")) == []
        result = verify_node(store, "n2")
        assert result.intact and result.records == 0, result.summary()
        assert verify_node(store, "n1").intact
    verified = target.run("audit", "verify", "--central")
    assert verified.code == 0, verified
    assert (
        "n2: intact: 0 records from audit-2026-03-01.jsonl on (9 before it pruned" in verified.out
    )


def test_a_sqlite_prune_stopped_half_way_leaves_a_chain_that_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Target("sqlite", write_config(tmp_path), {})
    records = days_of_calls(date(2026, 1, 5), 20, per_day=5)
    write(tmp_path / "audit", records)
    assert target.run("audit", "ship").code == 0
    monkeypatch.setattr(sqlite_store, "PRUNE_BATCH", 7)
    pauses = 0

    def stop_on_the_third() -> None:  # the process killed between two batches
        nonlocal pauses
        pauses += 1
        if pauses == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(sqlite_store, "_between_batches", stop_on_the_third)
    with target.open() as store, pytest.raises(KeyboardInterrupt):
        store.prune(day_number(date(2026, 2, 1)), 1)
    assert stored_ids(target) == [r["id"] for r in records[21:]]  # three batches of 7
    verified = target.run("audit", "verify", "--central")
    assert verified.code == 0 and "(21 before it pruned" in verified.out, verified

    monkeypatch.setattr(sqlite_store, "_between_batches", lambda: None)
    with target.open() as store:
        store.prune(day_number(date(2026, 2, 1)), 2)
        total = store.pruned("n1")
        assert total is not None and total.records == 100
    assert stored_ids(target) == []  # January only
    assert target.run("audit", "verify", "--central").code == 0


def test_a_postgres_prune_that_cannot_take_its_lock_changes_nothing(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "keep_days = 1")
    with postgres.database() as url:
        env = {"DIALGUARD_CENTRAL_URL": url, "DIALGUARD_CENTRAL_PASSWORD": postgres.password}
        target = Target("postgresql", config, env, postgres, url)
        records = days_of_calls(date(2026, 1, 5), 3) + days_of_calls(date(2026, 2, 2), 3)
        write(tmp_path / "audit", records)
        assert target.run("audit", "ship").code == 0
        monkeypatch.setattr(postgres_store, "PRUNE_LOCK_TIMEOUT", "200ms")
        reading = threading.Event()
        done = threading.Event()

        def long_query() -> None:  # an export reading `records` for a while
            with psycopg.connect(url, password=postgres.password) as db:
                db.execute(b"SELECT count(*) FROM records")
                reading.set()
                done.wait(20)

        reader = threading.Thread(target=long_query)
        reader.start()
        try:
            reading.wait(10)
            with target.open() as store, pytest.raises(CentralUnavailable, match="lock timeout"):
                store.prune(day_number(date(2026, 2, 1)), 1)
            result = target.run("central", "prune")
            assert result.code == 2 and len(result.err.splitlines()) == 1, result
            assert "lock timeout" in result.err
        finally:
            done.set()
            reader.join()
        assert stored_ids(target) == [r["id"] for r in records]
        assert target.sql("SELECT count(*) FROM prunes") == [(0,)]
        assert target.run("audit", "verify", "--central").code == 0
        assert target.run("central", "prune").code == 0  # once the export is done
        assert target.run("audit", "verify", "--central").code == 0
        assert len(stored_ids(target)) < len(records)


def test_keep_days_defaults_to_the_journals_retention(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    loaded = load_config(config, {})
    assert loaded.central is not None and loaded.central.keep_days == 1096
    text = config.read_text().replace("[audit]\n", "[audit]\nretention_days = 400\n")
    config.write_text(text)
    assert load_config(config, {}).central.keep_days == 400  # type: ignore[union-attr]
    config.write_text(text.replace("[central]\n", "[central]\nkeep_days = 0\n"))
    result = target_run(config, "central", "prune")
    assert result.code == 1 and "central.keep_days: 0 must be positive" in result.err


def target_run(config: Path, *args: str) -> Any:
    return Target("sqlite", config, {}).run(*args)


def test_prune_without_a_store_does_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = target_run(config, "central", "prune")
    assert result.code == 0 and "no central store here; nothing to prune" in result.out
    assert not (tmp_path / "central.sqlite3").exists()
