"""`dialguard audit export --mask` on records the service really wrote: the number is
replaced field by field, everything else (ts, latency, ids, hashes, keys) stays as it was.

The records come from the real Service on the test session's Redis: emergency numbers whose
digits also occur in `ts` (a byte-level replacement used to turn the line into invalid
JSON), an invalid number "a" (whose letter occurs in every key), a number on the
do-not-call list whose evidence names it, and a refusal outcome.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from dialguard.audit import Journal
from dialguard.cli import main
from dialguard.cli.audit import pseudonym
from dialguard.config import load_config
from dialguard.model import CallRequest
from dialguard.service import Service
from dialguard.store import Store
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
PARIS = ZoneInfo("Europe/Paris")
# Monday 2026-11-30, within the calling hours; 10:15:11.215 makes `ts` hold "15" and "112".
AT = datetime(2026, 11, 30, 10, 15, 11, 215_000, tzinfo=PARIS)
KEY = "an inspection key of 32 bytes.."
CAMPAIGN = "demo-prospecting"
LISTED = "06 12 34 56 78"
REASON = "asked on 0612345678 never to be called again"
# Fields the mask may change; every other one must come out as the journal holds it.
NUMBER_BEARING = {"number", "number_raw", "rules", "evidence", "facts", "channel", "why"}


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    argv = ["dialguard", *map(str, args)]
    env = {"COLUMNS": "200", "DIALGUARD_AUDIT_MASK_KEY": KEY}
    with (
        mock.patch.object(sys, "argv", argv),
        mock.patch.dict(os.environ, env),
        pytest.raises(SystemExit) as exit_,
    ):
        main()
    captured = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err


def write_journal(url: str, audit_dir: Path) -> None:
    config = load_config(ROOT / "config" / "dialguard.toml", env={"DIALGUARD_REDIS_URL": url})
    config = replace(config, audit_dir=audit_dir, node="test-node")

    async def go() -> None:
        store = Store.from_url(url, config.redis.prefix, 2000)
        service = Service(config, store, Journal(audit_dir), clock=lambda: AT)
        try:
            await service.dnc_add(LISTED, REASON, AT - timedelta(days=1))
            calls = [
                CallRequest("15", CAMPAIGN, "PJSIP/trunk-00000015", "1795955366.15"),
                CallRequest("112", CAMPAIGN, "PJSIP/trunk-00000112", "1795955366.112"),
                CallRequest("a", CAMPAIGN, "PJSIP/trunk-0000000a", "1795955366.10"),
                CallRequest(LISTED, CAMPAIGN, "Local/0612345678@outbound-00000001;2", "1.2"),
            ]
            for call in calls:
                await service.decide(call, record=True)
            outcome = CallRequest("07 12 34 56 78", CAMPAIGN, "Local/0712345678@out;2")
            await service.record_outcome(outcome, "refused")
            await service.aclose()
        finally:
            await store.close()

    asyncio.run(go())


def journal(audit_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(audit_dir.glob("audit-*.jsonl")):
        records += [json.loads(line) for line in path.read_bytes().splitlines()]
    return records


def alias_of(record: dict[str, Any]) -> str:
    return pseudonym(record["number"] or record["number_raw"], KEY.encode())


@pytest.fixture
def audit_dir(redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path) -> Path:
    directory = tmp_path / "audit"
    write_journal(redis_server.url, directory)
    return directory


def test_masked_jsonl_keeps_every_other_field_and_stays_json(
    audit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = journal(audit_dir)
    raw = ["?", "15", "112", "a", LISTED, "07 12 34 56 78"]  # the dnc add, a day before
    assert [r["number_raw"] for r in records] == [LISTED, *raw[1:]]
    assert "15" in str(records[1]["ts"]) and "112" in str(records[2]["ts"])  # the trap
    out = tmp_path / "masked.jsonl"
    code, _, err = run(capsys, "audit", "export", "--dir", audit_dir, "--out", out, "--mask")
    assert (code, err) == (0, "")
    lines = out.read_text(encoding="utf-8").splitlines()
    masked = [json.loads(line) for line in lines]  # every line is JSON
    assert len(masked) == len(records)
    for original, copy in zip(records, masked, strict=True):
        assert list(copy) == list(original)  # the same keys, in the same order
        for name in original.keys() - NUMBER_BEARING:
            assert copy[name] == original[name], name
        alias = alias_of(original)
        assert copy["number_raw"] == alias
        assert copy["number"] == (alias if original["number"] else None)
        text = json.dumps(copy)
        for spelling in (original["number"], original["number_raw"]):
            if spelling and spelling not in ("15", "112") and any(map(str.isdigit, spelling)):
                # In no spelling: "06 12 34 56 78" is also "0612345678" in the channel.
                assert spelling.replace(" ", "") not in text.replace(" ", ""), spelling
        assert repr(original["number_raw"]) not in text
        if "rules" in original:
            shape = [(r["rule"], r["outcome"], r["reason"]) for r in original["rules"]]
            assert [(r["rule"], r["outcome"], r["reason"]) for r in copy["rules"]] == shape

    added, emergency, short, invalid, listed, refusal = masked
    assert added["kind"] == "dnc-add" and added["why"] == listed["evidence"]["dnc"]["reason"]
    assert emergency["reason"] == "EMERGENCY" and short["reason"] == "EMERGENCY"
    # Digits that merely contain the number are not the number.
    assert emergency["channel"] == "PJSIP/trunk-00000015"
    assert short["channel"] == "PJSIP/trunk-00000112"
    assert invalid["reason"] == "INVALID_NUMBER"
    assert invalid["rules"][-1]["detail"].startswith(f"'{alias_of(records[3])}' contains")
    assert invalid["channel"] == "PJSIP/trunk-0000000a"
    alias = alias_of(records[4])
    assert listed["reason"] == "INTERNAL_DNC"
    assert listed["evidence"]["dnc"]["reason"] == f"asked on {alias} never to be called again"
    assert listed["facts"]["dnc"][1] == f"asked on {alias} never to be called again"
    assert listed["channel"] == f"Local/{alias}@outbound-00000001;2"
    assert f"{alias} mobile FR" in [rule["detail"] for rule in listed["rules"]]
    assert refusal["kind"] == "outcome"
    assert refusal["channel"] == f"Local/{alias_of(records[5])}@out;2"


def test_masked_csv_keeps_every_other_field(
    audit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = journal(audit_dir)
    out = tmp_path / "masked.csv"
    args: list[str | Path] = ["audit", "export", "--dir", audit_dir, "--out", out]
    code, _, err = run(capsys, *args, "--format", "csv", "--mask")
    assert (code, err) == (0, "")
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    for original, row in zip(records, rows, strict=True):
        moment = datetime.fromtimestamp(original["ts"] / 1000, UTC)
        assert row["ts"] == moment.isoformat(timespec="milliseconds")
        for name in ("id", "latency_us", "prev", "hash", "uniqueid", "campaign", "reason"):
            value = original.get(name)
            assert row[name] == ("" if value is None else str(value)), name
        assert row["number_raw"] == alias_of(original)
        assert json.loads(row["rules"] or "[]") is not None
    assert "0612345678" not in out.read_text(encoding="utf-8")
