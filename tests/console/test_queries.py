"""The console's queries on both central stores (SQLite, and a PostgreSQL started by the
tests): the same answers as the journal itself, one indexed query each."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from dialguard.central.store import Filters
from tests.test_audit import write
from tests.test_central import DAY1, HOUR, Target, postgres, target, varied

__all__ = ["postgres", "target"]  # the fixtures, imported for these tests

RECORDS = 300


def newest_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["ts"], r["id"]), reverse=True)


@pytest.fixture
def shipped(target: Target) -> tuple[Target, list[dict[str, Any]]]:
    records = varied(RECORDS, step_ms=3 * 60_000)
    # Two records at one instant: paging must not lose or repeat either.
    twin = {**records[-1], "id": records[-1]["id"][:-6] + "ffffff"}
    records.append(twin)
    write(target.config.parent / "audit", records)
    assert target.run("audit", "ship").code == 0
    return target, records


@pytest.mark.parametrize(
    "filters, keep",
    [
        (Filters(), lambda r: True),
        (Filters(campaign="demo-press"), lambda r: r.get("campaign") == "demo-press"),
        (Filters(reason="OPTOUT_LISTED", since_ms=DAY1 + 2 * HOUR, until_ms=DAY1 + 9 * HOUR),
         lambda r: r.get("reason") == "OPTOUT_LISTED" and 2 <= (r["ts"] - DAY1) / HOUR < 9),
        (Filters(number="+33612340005"), lambda r: r["number"] == "+33612340005"),
        (Filters(result="ALLOW", principal="ACME", node="n1"),
         lambda r: r.get("result") == "ALLOW"),
        (Filters(kind="outcome"), lambda r: r.get("kind") == "outcome"),
        (Filters(degraded=True),
         lambda r: bool(r.get("degraded")) and r.get("kind", "decision") == "decision"),
        (Filters(campaign="nothing"), lambda r: False),
    ],
)  # fmt: skip
def test_search_pages_through_what_the_filters_select(
    shipped: tuple[Target, list[dict[str, Any]]], filters: Filters, keep: Any
) -> None:
    target, records = shipped
    expected = [r["id"] for r in newest_first(records) if keep(r)]
    with target.open() as store:
        for newest in (True, False):
            seen: list[str] = []
            after = None
            while True:
                page = store.search(filters, newest, after, 7)
                seen += [found.id for found in page]
                if len(page) < 7:
                    break
                after = (page[-1].ts, page[-1].id)
            assert seen == (expected if newest else expected[::-1]), (filters, newest)


def test_a_record_the_last_shipped_the_events_and_an_export(
    shipped: tuple[Target, list[dict[str, Any]]],
) -> None:
    target, records = shipped
    with target.open() as store:
        found = store.record(records[42]["id"])
        assert found is not None and orjson.loads(found.line)["id"] == records[42]["id"]
        assert found.node == "n1" and found.ts == records[42]["ts"]
        assert store.record("0" * 26) is None
        assert store.last_shipped("n1") == records[-1]["ts"]
        assert store.last_shipped("nobody") is None
        kinds = ["dnc-add", "outcome"]
        events = store.events(DAY1 + HOUR, kinds)
        expected = [r for r in records if r.get("kind") in kinds and r["ts"] >= DAY1 + HOUR]
        assert [e.id for e in events] == [
            r["id"] for r in sorted(expected, key=lambda r: (r["ts"], r["id"]))
        ]
        with pytest.raises(ValueError):
            store.events(0, ["decision"])
        exported = list(store.export(Filters(campaign="demo-survey")))
        # Chain order: the journal's order of those records.
        assert [e.id for e in exported] == [
            r["id"] for r in records if r.get("campaign") == "demo-survey"
        ]
        every = [e.line for e in store.export(Filters())]
        assert every == [line for *_, line in store.chain("n1")]
