"""The benchmark's fast loader (tests/central_corpus.py) stores exactly what the shipper
stores from the same journals: rows, rollups and cursors alike (all but `shipped_at`, the
moment of shipping), on both backends."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from dialguard.central.ship import Shipper
from dialguard.central.verify import verify_node
from tests import test_central
from tests.central_corpus import NODES, Corpus, load, write_journals
from tests.test_central import Target

target = test_central.target  # a store of each backend
postgres = test_central.postgres

COLUMNS = (
    "node, id, ts, file_day, file_offset, kind, result, reason, outcome, number, campaign,"
    " principal, shadowed, hash, prev, line"
)
ORDER = " ORDER BY node, file_day, file_offset"


def contents(target: Target) -> tuple[list[tuple[Any, ...]], ...]:
    return (
        target.sql(f"SELECT {COLUMNS} FROM records" + ORDER),
        target.sql("SELECT * FROM rollups ORDER BY hour, node, kind, campaign, result, reason"),
        target.sql(
            "SELECT node, file, file_offset, last_hash, start_hash, records, error FROM cursors"
            " ORDER BY node"
        ),
        target.sql("SELECT count(*) FROM chain_breaks"),
    )


def test_the_loader_stores_what_the_shipper_stores(target: Target, tmp_path: Path) -> None:
    corpus = Corpus(4000, 40, date(2026, 12, 4))  # over the end of October and November
    journals = write_journals(corpus, tmp_path / "journals")
    with target.open() as store:
        store.migrate()
        for node, directory in journals.items():
            report = Shipper(store, directory, node, batch=700).ship()
            assert not report.breaks and not report.torn
    shipped = contents(target)
    records, _, cursors, _ = shipped
    total = len(records)
    decisions = sum(1 for row in records if row[5] == "decision")
    assert decisions == 4000 and sum(row[5] for row in cursors) == total > decisions
    assert [row[0] for row in cursors] == sorted(node for node, _ in NODES)

    for table in ("records", "rollups", "cursors"):
        target.sql(f"DELETE FROM {table}")
    with target.open() as store:
        assert load(store, corpus, batch=700) == total
        assert all(verify_node(store, node).intact for node, _ in NODES)
    assert contents(target) == shipped


def test_rollups_are_summed_by_the_database_and_only_by_their_columns(target: Target) -> None:
    with target.open() as store:
        store.migrate()
        assert load(store, Corpus(600, 3, date(2026, 12, 4))) > 600
        rows = store.rollups(None, None)
        by_node = store.rollup_sums(("node",), None, None)
        assert sorted(by_node) == sorted(
            (node, sum(r.n for r in rows if r.node == node),
             sum(r.shadowed for r in rows if r.node == node),
             sum(r.degraded for r in rows if r.node == node))
            for node in {r.node for r in rows}
        )  # fmt: skip
        assert any(r.degraded for r in rows)
        outcomes = store.rollup_sums(("hour",), None, None, kind="outcome")
        assert sum(n for _, n, _, _ in outcomes) == (sum(r.n for r in rows if r.kind == "outcome"))
        with pytest.raises(ValueError, match="summed by some of"):
            store.rollup_sums(("node; DROP TABLE records",), None, None)
