"""`dialguard audit replay`: a journal made by the real service under the shipped policy,
decided again (a) under the same policy: no change at all; (b) with a cap of 3 instead
of 4; (c) with hours ending at 19:00: exactly the decisions expected change."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dialguard.audit import Journal
from dialguard.config import load_config
from dialguard.import_files import ConsentRow, DncRow
from dialguard.model import CallRequest, Reason, Unavailable
from dialguard.numbers import normalise
from dialguard.service import Service
from dialguard.store import Store
from dialguard.store.loading import load
from tests.cli_runner import run_dialguard
from tests.journal import audit_records
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config" / "policy" / "france.toml"
PARIS = ZoneInfo("Europe/Paris")


def paris(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


@dataclass
class Journalled:
    audit: Path
    ids: dict[str, str] = field(default_factory=dict)  # a label -> its decision's id


@pytest.fixture
async def journal(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Journalled]:
    config = load_config(
        ROOT / "config" / "dialguard.toml", env={"DIALGUARD_REDIS_URL": clean_redis.url}
    )
    config = replace(config, audit_dir=tmp_path / "audit", node="replay-test")
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir))
    given = paris("2026-11-01T10:00")
    consented = ["0611000001", "0611000002", "0611000004", "0262123456", "0611000007"]
    rows = [ConsentRow(normalise(n), "ACME", given, None, f"crm:{n}") for n in consented]
    await load(store.lists, "consent", rows, "add")
    await load(store.lists, "dnc", [DncRow(normalise("0611000006").key, "asked")], "add")
    made = Journalled(config.audit_dir)

    async def call(
        label: str,
        number: str,
        when: str,
        campaign: str = "demo-prospecting",
        callerid: str = "",
        unavailable: Unavailable | None = None,
    ) -> None:
        request = CallRequest(number, campaign, callerid=callerid, callingpres="0", adapter="test")
        verdict = await service.decide(
            request, now=paris(when), record=True, unavailable=unavailable
        )
        made.ids[label] = verdict.id

    down = Unavailable(Reason.DEADLINE, "channel found parked")
    # In time order, as a journal is written. A: four calls in three days, then a fifth,
    # denied at the cap of 4; D: four calls in a morning, then one at 19:30.
    calls = [
        ("emergency", "112", "2026-11-29T03:00", "demo-prospecting", "", None),
        ("A1", "0611000001", "2026-11-30T11:00", "demo-prospecting", "", None),
        ("E", "0262123456", "2026-11-30T11:00", "demo-prospecting", "", None),
        ("invalid", "12ab", "2026-11-30T11:00", "demo-prospecting", "", None),
        ("unknown-campaign", "0611000001", "2026-11-30T11:00", "nope", "", None),
        ("dnc", "0611000006", "2026-11-30T11:00", "demo-prospecting", "", None),
        ("npv", "0611000007", "2026-11-30T11:00", "demo-dialer", "0948120042", None),
        ("geographic", "0611000007", "2026-11-30T11:05", "demo-dialer", "0147000000", None),
        ("expired", "0611000007", "2026-11-30T11:06", "demo-dialer", "0162000000", None),
        ("degraded", "0611000007", "2026-11-30T11:10", "demo-prospecting", "", down),
        ("A2", "0611000001", "2026-11-30T15:00", "demo-prospecting", "", None),
        ("B-1859", "0611000002", "2026-11-30T18:59", "demo-prospecting", "", None),
        ("B-1930", "0611000002", "2026-11-30T19:30", "demo-prospecting", "", None),
        ("C-1930", "0611000003", "2026-11-30T19:30", "demo-prospecting", "", None),
        ("D1", "0611000004", "2026-12-01T10:30", "demo-prospecting", "", None),
        ("A3", "0611000001", "2026-12-01T11:00", "demo-prospecting", "", None),
        ("D2", "0611000004", "2026-12-01T11:00", "demo-prospecting", "", None),
        ("D3", "0611000004", "2026-12-01T11:30", "demo-prospecting", "", None),
        ("D4", "0611000004", "2026-12-01T12:00", "demo-prospecting", "", None),
        ("A4", "0611000001", "2026-12-01T15:00", "demo-prospecting", "", None),
        ("D-1930", "0611000004", "2026-12-01T19:30", "demo-prospecting", "", None),
        ("A5", "0611000001", "2026-12-02T11:00", "demo-prospecting", "", None),
    ]
    for label, number, when, campaign, callerid, unavailable in calls:
        await call(label, number, when, campaign, callerid, unavailable)
    await asyncio.sleep(0.05)  # slot releases, off the answer's path
    # A record from before snapshots: counted, not replayable.
    old = {**audit_records(made.audit)[0], "id": "old-record"}
    for name in ("facts", "prev", "hash"):
        old.pop(name)
    await Journal(made.audit).append(old)
    await service.aclose()
    await store.close()
    yield made


def policy_file(tmp_path: Path, old: str, new: str) -> Path:
    text = SHIPPED.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "candidate.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def replayed(journal: Journalled, policy: Path, *extra: str) -> dict[str, object]:
    run = run_dialguard(
        [
            "audit",
            "replay",
            "--policy",
            policy,
            "--dir",
            journal.audit,
            "--json",
            "--examples",
            "100",
            *extra,
        ]
    )
    assert run.code == 0, run.err
    result: dict[str, object] = json.loads(run.out)
    return result


def changed_ids(report: dict[str, object]) -> dict[str, str]:
    examples = report["examples"]
    assert isinstance(examples, list)
    return {e["id"]: f"{e['from']['reason']} -> {e['to']['reason']}" for e in examples}


def test_the_journal_holds_what_the_scenario_says(journal: Journalled) -> None:
    records = {r["id"]: r for r in audit_records(journal.audit)}
    reasons = {label: records[i]["reason"] for label, i in journal.ids.items()}
    assert reasons == {
        "A1": "CONSENT", "A2": "CONSENT", "A3": "CONSENT", "A4": "CONSENT",
        "A5": "FREQUENCY_CAP", "B-1930": "CONSENT", "B-1859": "CONSENT",
        "C-1930": "NO_CONSENT", "D1": "CONSENT", "D2": "CONSENT", "D3": "CONSENT",
        "D4": "CONSENT", "D-1930": "FREQUENCY_CAP", "E": "CONSENT", "emergency": "EMERGENCY",
        "invalid": "INVALID_NUMBER", "unknown-campaign": "UNKNOWN_CAMPAIGN",
        "dnc": "INTERNAL_DNC", "npv": "CONSENT", "geographic": "CALLER_ID_FORBIDDEN",
        "expired": "CALLER_ID_NOT_AUTHORISED", "degraded": "DEADLINE",
    }  # fmt: skip
    snapshot = records[journal.ids["A4"]]["facts"]
    assert snapshot["att"] == 3 and snapshot["c"] == ["closed", True, False, False]
    assert snapshot["con"][2] == "crm:0611000001"


def test_a_same_policy_changes_nothing_exactly(journal: Journalled, tmp_path: Path) -> None:
    report = replayed(journal, SHIPPED)
    assert report["records"] == len(journal.ids) + 1
    assert report["replayed"] == len(journal.ids)
    assert report["not_replayable"] == 1
    assert (report["changed"], report["unchanged"]) == (0, len(journal.ids))
    assert report["examples"] == [] and report["record"] is None  # --dir: nothing written


def test_b_a_cap_of_three(journal: Journalled, tmp_path: Path) -> None:
    report = replayed(journal, policy_file(tmp_path, "max_attempts = 4", "max_attempts = 3"))
    assert changed_ids(report) == {
        journal.ids["A4"]: "CONSENT -> FREQUENCY_CAP",
        journal.ids["D4"]: "CONSENT -> FREQUENCY_CAP",
    }
    assert (report["newly_denied"], report["newly_allowed"], report["reason_changed"]) == (2, 0, 0)
    assert report["by_day"] == [
        {"day": "2026-12-01", "newly_denied": 2, "newly_allowed": 0, "reason_changed": 0}
    ]
    assert report["by_change"] == [
        {"from": "ALLOW CONSENT", "to": "DENY FREQUENCY_CAP", "decisions": 2}
    ]


def test_c_hours_ending_at_19(journal: Journalled, tmp_path: Path) -> None:
    candidate = policy_file(
        tmp_path,
        'windows = [["10:00", "13:00"], ["14:00", "20:00"]]',
        'windows = [["10:00", "13:00"], ["14:00", "19:00"]]',
    )
    report = replayed(journal, candidate)
    assert changed_ids(report) == {
        journal.ids["B-1930"]: "CONSENT -> OUTSIDE_HOURS",
        journal.ids["D-1930"]: "FREQUENCY_CAP -> OUTSIDE_HOURS",  # hours come before the cap
    }
    assert (report["newly_denied"], report["newly_allowed"], report["reason_changed"]) == (1, 0, 1)
    by_campaign = report["by_campaign"]
    assert by_campaign == [
        {"campaign": "demo-prospecting", "newly_denied": 1, "newly_allowed": 0, "reason_changed": 1}
    ]
    only_monday = replayed(journal, candidate, "--since", "2026-11-30", "--until", "2026-11-30")
    assert changed_ids(only_monday) == {journal.ids["B-1930"]: "CONSENT -> OUTSIDE_HOURS"}
    other = replayed(journal, candidate, "--campaign", "demo-dialer")
    assert other["changed"] == 0 and other["replayed"] == 3


def test_replay_writes_one_record_naming_the_file_and_the_counts(
    journal: Journalled, tmp_path: Path
) -> None:
    config = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    config = config.replace('dir = "../var/audit"', f'dir = "{journal.audit}"')
    config = config.replace('"policy/france.toml"', f'"{SHIPPED}"')
    path = tmp_path / "dialguard.toml"
    path.write_text(config, encoding="utf-8")
    candidate = policy_file(tmp_path, "max_attempts = 4", "max_attempts = 3")
    before = len(audit_records(journal.audit))
    run = run_dialguard(
        ["audit", "replay", "--policy", candidate, "--config", path, "--operator", "dora"],
        {"COLUMNS": "200"},
    )
    assert run.code == 0, run.err
    said = " ".join(run.out.split())
    assert "2 would change (2 newly denied, 0 newly allowed, 0 with another reason)" in said
    assert "1 not replayable" in said
    records = audit_records(journal.audit)
    assert len(records) == before + 1
    record = records[-1]
    assert record["kind"] == "replay" and record["operator"] == "dora"
    assert record["policy"]["hash"] != "" and record["file"] == str(candidate)
    assert (record["replayed"], record["changed"], record["newly_denied"]) == (
        len(journal.ids),
        2,
        2,
    )
    assert run_dialguard(["audit", "verify", "--dir", journal.audit]).code == 0
    bad = run_dialguard(
        ["audit", "replay", "--policy", tmp_path / "none.toml", "--dir", journal.audit]
    )
    assert (bad.code, bad.err) == (1, f"dialguard: {tmp_path / 'none.toml'}: file not found\n")


def test_the_quick_path_decides_every_record_as_decide(journal: Journalled, tmp_path: Path) -> None:
    # What replay counts with (policy.outcome, records read without their rules) against
    # the whole decision, for every record of the journal, under the three policies.
    from dialguard.audit.reader import Query
    from dialguard.config import load_policy
    from dialguard.replay import _outcome, decisions, redecide

    lines = [
        line for path in sorted(journal.audit.glob("audit-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]  # fmt: skip
    policies = [  # each loaded before the next one takes its file
        load_policy(SHIPPED),
        load_policy(policy_file(tmp_path, "max_attempts = 4", "max_attempts = 3")),
        load_policy(policy_file(tmp_path, '["14:00", "20:00"]', '["14:00", "19:00"]')),
    ]
    records = list(decisions(lines, Query(kind="decision")))
    assert len(records) == len(journal.ids) + 1
    changed = 0
    for policy in policies:
        for record in records:
            full = redecide(record, policy)
            quick = _outcome(record, policy, {}, {}, {})
            assert quick == (None if full is None else (full.result, full.reason))
            changed += quick is not None and quick != (record["result"], record["reason"])
    assert changed == 4  # tests b and c
