"""The audit journal: hash chain, group commit across threads and processes, crashes,
tampering, torn records, and the supervisor's commands (`dialguard audit ...`)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import itertools
import json
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dialguard.audit import AuditUnavailable, Journal
from dialguard.audit.files import GENESIS, HEAD_NAME, INDEX_ENTRY, START_NAME
from dialguard.audit.reader import verify
from tests.cli_runner import run_dialguard
from tests.journal import audit_records

DAY1 = int(datetime(2026, 11, 30, 8, 0, tzinfo=UTC).timestamp() * 1000)  # 09:00 Paris
DAY2 = DAY1 + 86_400_000
ROOT = Path(__file__).resolve().parents[1]


def record(n: int, ts: int, number: str = "+33612345678", **fields: Any) -> dict[str, Any]:
    base = {
        "id": f"{ts:012x}00000000{n:06x}",
        "ts": ts,
        "node": "test",
        "kind": "decision",
        "result": "ALLOW",
        "reason": "CONSENT",
        "number_raw": number,
        "number": number,
        "campaign": "demo-prospecting",
        "principal": "ACME",
        "rules": [{"rule": "number", "outcome": "pass", "detail": f"{number} mobile FR"}],
    }
    base.update(fields)
    return base


def write(directory: Path, records: list[dict[str, Any]]) -> None:
    async def go() -> None:
        journal = Journal(directory)
        for item in records:
            await journal.append(item)

    asyncio.run(go())


def assert_index_matches(directory: Path) -> None:
    """Each day's index holds one entry per record, in order: the number and the offset."""
    for path in directory.glob("audit-*.jsonl"):
        index = path.with_suffix(".idx").read_bytes()
        entries = [INDEX_ENTRY.unpack_from(index, at) for at in range(0, len(index), 16)]
        expected = []
        offset = 0
        for line in path.read_bytes().splitlines(keepends=True):
            expected.append((int(json.loads(line)["number"][1:]), offset))
            offset += len(line)
        assert entries == expected, path


def run(*args: str | Path, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    result = run_dialguard(args, {"COLUMNS": "200", **(env or {})})
    return result.code, result.out, result.err


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    """Ten records on 2026-11-30, five on 2026-12-01, varied enough for search and stats."""
    directory = tmp_path / "audit"
    day1 = [
        record(i, DAY1 + i * 3_600_000, f"+3361234560{i}", campaign="demo-prospecting")
        for i in range(7)
    ]
    day1 += [
        record(
            7 + i,
            DAY1 + i * 60_000,
            "+33612345678",
            result="DENY",
            reason="OPTOUT_LISTED",
            campaign="demo-press",
            principal="PRESSCO",
        )
        for i in range(3)
    ]
    day1.sort(key=lambda r: r["ts"])
    day2 = [record(20 + i, DAY2 + i * 1000, "+33612345678") for i in range(5)]
    write(directory, day1 + day2)
    return directory


# --- the chain --------------------------------------------------------------------------


def test_records_are_chained_across_day_files_and_private(journal_dir: Path) -> None:
    records = audit_records(journal_dir)
    assert len(records) == 15
    assert records[0]["prev"] == GENESIS.decode()
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]  # across the two files too
    for line in (journal_dir / "audit-2026-11-30.jsonl").read_bytes().splitlines():
        hashed = line[: line.rindex(b',"hash":"')]
        assert hashlib.sha256(hashed).hexdigest() == json.loads(line)["hash"]
    assert [p.name for p in sorted(journal_dir.glob("*.jsonl"))] == [
        "audit-2026-11-30.jsonl",
        "audit-2026-12-01.jsonl",
    ]
    assert stat.S_IMODE(journal_dir.stat().st_mode) == 0o700
    for path in journal_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    result = verify(journal_dir)
    assert (result.intact, result.records, result.files) == (True, 15, 2)
    assert result.last_hash == records[-1]["hash"]


def test_a_late_record_never_reopens_a_closed_day(tmp_path: Path) -> None:
    write(tmp_path, [record(1, DAY2), record(2, DAY1)])  # a lagging clock, after midnight
    assert [p.name for p in tmp_path.glob("*.jsonl")] == ["audit-2026-12-01.jsonl"]
    assert verify(tmp_path).intact


def test_a_change_dated_days_back_is_found_by_a_search_of_its_day(tmp_path: Path) -> None:
    """A withdrawal reported with `--at` a week back goes to the newest file: a search of
    its day, or stats and exports of it, must look there (the `.late` file says so)."""
    week_back = DAY1 - 7 * 86_400_000
    withdrawal = record(3, week_back, kind="consent-withdraw", result=None, reason=None)
    write(tmp_path, [record(1, DAY1), record(2, DAY2), withdrawal, record(4, DAY2 + 1)])
    assert [p.name for p in sorted(tmp_path.glob("audit-*"))] == [
        "audit-2026-11-30.idx",
        "audit-2026-11-30.jsonl",
        "audit-2026-12-01.idx",
        "audit-2026-12-01.jsonl",
        "audit-2026-12-01.late",
    ]
    assert (tmp_path / "audit-2026-12-01.late").read_text() == "2026-11-23\n"
    base: list[str | Path] = ["audit", "search", "--dir", tmp_path, "--json"]
    code, out, _ = run(*base, "--since", "2026-11-23", "--until", "2026-11-23")
    assert code == 0 and [json.loads(line)["id"] for line in out.splitlines()] == [withdrawal["id"]]
    assert run(*base, "--since", "2026-11-24", "--until", "2026-11-29")[1] == ""
    # A record a few hours late (a lagging clock) needs no note: readers allow a day.
    assert verify(tmp_path).intact


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from dialguard.audit import Journal
        from tests.test_audit import record, DAY1
        async def go(tag):
            journal = Journal(Path(sys.argv[1]))
            await asyncio.gather(*(
                journal.append(record(i, DAY1 + i, id=f"{tag}-{i}")) for i in range(400)))
        asyncio.run(go(sys.argv[2]))
        """
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"p{n}"], cwd=ROOT)
        for n in range(4)
    ]

    async def in_this_process() -> None:  # two journals (two writer threads) as well
        journals = [Journal(tmp_path), Journal(tmp_path)]
        await asyncio.gather(
            *(journals[i % 2].append(record(i, DAY1 + i, id=f"t-{i}")) for i in range(400))
        )

    asyncio.run(in_this_process())
    assert [p.wait(timeout=60) for p in processes] == [0, 0, 0, 0]
    ids = [r["id"] for r in audit_records(tmp_path)]
    expected = {f"{tag}-{i}" for tag in ("p0", "p1", "p2", "p3", "t") for i in range(400)}
    assert len(ids) == len(expected) and set(ids) == expected
    assert verify(tmp_path).intact  # one chain across all writers
    assert_index_matches(tmp_path)


def test_sigkill_mid_load_keeps_every_answered_record(tmp_path: Path) -> None:
    # The child prints each id once append() returned: what a dialplan would have heard.
    script = textwrap.dedent(
        """
        import asyncio, sys, os
        from pathlib import Path
        from dialguard.audit import Journal
        from tests.test_audit import record, DAY1
        async def worker(journal, w):
            for i in range(1_000_000):
                rid = f"w{w}-{i}"
                await journal.append(record(i, DAY1 + i, id=rid))
                os.write(1, (rid + "\\n").encode())
        async def go():
            journal = Journal(Path(sys.argv[1]))
            await asyncio.gather(*(worker(journal, w) for w in range(50)))
        asyncio.run(go())
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    answered: list[str] = []
    deadline = time.monotonic() + 20
    while len(answered) < 3000 and time.monotonic() < deadline:
        answered.append(child.stdout.readline().decode().strip())
    child.send_signal(signal.SIGKILL)
    answered += child.stdout.read().decode().split()
    child.wait()
    assert len(answered) >= 3000
    journal_ids = [r["id"] for r in audit_records(tmp_path)]
    assert len(journal_ids) == len(set(journal_ids))
    assert set(answered) <= set(journal_ids)
    # The next writer carries the chain on from whatever the killed one left.
    write(tmp_path, [record(1, DAY1 + 5, id="after")])
    assert verify(tmp_path).intact
    assert audit_records(tmp_path)[-1]["id"] == "after"
    assert_index_matches(tmp_path)


# --- tampering --------------------------------------------------------------------------


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _edit(journal_dir: Path) -> None:
    path = journal_dir / "audit-2026-11-30.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"result":"DENY"', b'"result":"ALOW"', 1))


def _delete(journal_dir: Path) -> None:
    path = journal_dir / "audit-2026-11-30.jsonl"
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:3] + lines[4:]))


def _swap(journal_dir: Path) -> None:
    path = journal_dir / "audit-2026-11-30.jsonl"
    lines = _lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))


def _insert(journal_dir: Path) -> None:
    # A well-formed record, sealed after the third one: only the fourth's `prev` shows it.
    path = journal_dir / "audit-2026-11-30.jsonl"
    lines = _lines(path)
    prev = json.loads(lines[2])["hash"].encode()
    body = json.dumps(record(99, DAY1 + 1), separators=(",", ":")).encode()
    sealed = body[:-1] + b',"prev":"' + prev + b'"'
    forged = sealed + b',"hash":"' + hashlib.sha256(sealed).hexdigest().encode() + b'"}\n'
    path.write_bytes(b"".join([*lines[:3], forged, *lines[3:]]))


def _truncate_last_file(journal_dir: Path) -> None:
    path = journal_dir / "audit-2026-12-01.jsonl"
    path.write_bytes(b"".join(_lines(path)[:-2]))  # at a line boundary: looks clean


def _truncate_first_file(journal_dir: Path) -> None:
    path = journal_dir / "audit-2026-11-30.jsonl"
    path.write_bytes(b"".join(_lines(path)[:-1]))


def _remove_last_file(journal_dir: Path) -> None:
    (journal_dir / "audit-2026-12-01.jsonl").unlink()


def _remove_first_file(journal_dir: Path) -> None:
    (journal_dir / "audit-2026-11-30.jsonl").unlink()


@pytest.mark.parametrize(
    ("tamper", "where", "why"),
    [
        (_edit, "audit-2026-11-30.jsonl line 2 (id ", "edited"),
        (_delete, "audit-2026-11-30.jsonl line 4 (id ", "removed, inserted or reordered"),
        (_swap, "audit-2026-11-30.jsonl line 4 (id ", "removed, inserted or reordered"),
        (_insert, "audit-2026-11-30.jsonl line 5 (id ", "removed, inserted or reordered"),
        (_truncate_last_file, "audit-2026-12-01.jsonl", "truncated"),
        (_truncate_first_file, "audit-2026-12-01.jsonl line 1", "removed, inserted or reordered"),
        (_remove_last_file, "audit-2026-12-01.jsonl", "missing: removed"),
        (_remove_first_file, "audit-2026-12-01.jsonl line 1", "removed, inserted or reordered"),
    ],
)
def test_verify_names_the_first_record_that_breaks_the_chain(
    journal_dir: Path,
    tamper: Callable[[Path], None],
    where: str,
    why: str,
) -> None:
    assert run("audit", "verify", "--dir", journal_dir)[0] == 0
    tamper(journal_dir)
    code, out, _ = run("audit", "verify", "--dir", journal_dir)
    assert code == 3
    assert out.startswith("NOT INTACT after ")
    assert where in out and why in out


def test_a_tampered_journal_stops_the_writer(journal_dir: Path) -> None:
    _truncate_last_file(journal_dir)
    with pytest.raises(AuditUnavailable, match="truncated or edited"):
        write(journal_dir, [record(1, DAY2)])


# --- torn records -----------------------------------------------------------------------


def test_a_torn_last_record_is_reported_then_moved_aside(journal_dir: Path) -> None:
    path = journal_dir / "audit-2026-12-01.jsonl"
    size = path.stat().st_size
    with path.open("ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"id":"half","ts":17')
    code, out, _ = run("audit", "verify", "--dir", journal_dir)
    assert code == 3 and f"torn last record at byte {size}" in out
    code, out, err = run("audit", "search", "--dir", journal_dir, "--json")
    assert code == 0 and len(out.splitlines()) == 15  # every whole record, none mis-parsed
    assert f"warning: {path}: torn last record at byte {size}" in err
    # The next writer moves it aside (never silently dropped) and chains on.
    write(journal_dir, [record(1, DAY2 + 9000, id="next")])
    assert (journal_dir / "audit-2026-12-01.jsonl.torn").read_bytes() == (
        b'%d {"id":"half","ts":17\n' % size
    )
    code, out, err = run("audit", "verify", "--dir", journal_dir)
    assert code == 0 and out.startswith("intact: 16 records in 2 files")
    assert "torn records moved aside" in err


# --- the supervisor's commands ----------------------------------------------------------


@pytest.mark.parametrize("spelling", ["06 12 34 56 78", "+33 6 12 34 56 78", "0033612345678"])
def test_search_by_number_in_any_spelling(journal_dir: Path, spelling: str) -> None:
    code, out, _ = run("audit", "search", "--dir", journal_dir, "--number", spelling, "--json")
    assert code == 0
    found = [json.loads(line) for line in out.splitlines()]
    assert len(found) == 8 and {r["number"] for r in found} == {"+33612345678"}


def test_search_finds_records_the_index_lacks(journal_dir: Path) -> None:
    index = journal_dir / "audit-2026-12-01.idx"
    index.write_bytes(index.read_bytes()[:-40])  # a crash before the entries were written
    (journal_dir / "audit-2026-11-30.idx").unlink()
    code, out, _ = run("audit", "search", "--dir", journal_dir, "--number", "0612345678", "--json")
    assert code == 0 and len(out.splitlines()) == 8


def test_search_filters_combine(journal_dir: Path) -> None:
    base: list[str | Path] = ["audit", "search", "--dir", journal_dir, "--json"]
    denied = run(*base, "--result", "DENY", "--campaign", "demo-press")[1].splitlines()
    assert len(denied) == 3
    assert run(*base, "--principal", "PRESSCO", "--reason", "CONSENT")[1] == ""
    # Dates are days in Paris: 2026-12-01 runs from 23:00 UTC on the 30th.
    code, out, _ = run(*base, "--since", "2026-12-01", "--until", "2026-12-01")
    assert code == 0 and len(out.splitlines()) == 5
    one = json.loads(denied[1])
    found = run(*base, "--id", one["id"])[1].splitlines()
    assert [json.loads(line)["hash"] for line in found] == [one["hash"]]
    code, out, _ = run("audit", "search", "--dir", journal_dir, "--number", "0612345678")
    assert code == 0 and "8 records" in out and "OPTOUT_LISTED" in out


def test_stats_over_a_range(journal_dir: Path) -> None:
    code, out, _ = run("audit", "stats", "--dir", journal_dir, "--until", "2026-11-30", "--json")
    assert code == 0
    summary = json.loads(out)
    assert (summary["decisions"], summary["allowed"], summary["denied"]) == (10, 7, 3)
    assert summary["deny_rate"] == 0.3
    assert summary["by_reason"][0] == {
        "result": "ALLOW",
        "reason": "CONSENT",
        "decisions": 7,
        "shadowed": 0,
    }
    press = next(c for c in summary["by_campaign"] if c["campaign"] == "demo-press")
    assert press == {
        "campaign": "demo-press",
        "decisions": 3,
        "allowed": 0,
        "denied": 3,
        "deny_rate": 1.0,
        "shadowed": 0,
    }
    nine = next(h for h in summary["by_hour"] if h["hour"] == 9)  # 08:00 UTC in Paris
    assert (nine["decisions"], nine["denied"]) == (4, 3)
    code, out, _ = run("audit", "stats", "--dir", journal_dir)
    assert code == 0 and "15 decisions" in out and "deny rate 20.0%" in out


def test_export_with_manifest_and_masked_numbers(journal_dir: Path, tmp_path: Path) -> None:
    records = audit_records(journal_dir)
    out = tmp_path / "inspection.jsonl"
    code, _, _ = run("audit", "export", "--dir", journal_dir, "--out", out)
    assert code == 0
    assert out.read_bytes() == b"".join(
        p.read_bytes() for p in sorted(journal_dir.glob("*.jsonl"))
    )  # byte for byte: the inspector can re-verify the chain
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    manifest = json.loads((tmp_path / "inspection.jsonl.manifest.json").read_text())
    assert manifest["records"] == 15
    assert (manifest["first_hash"], manifest["last_hash"]) == (
        records[0]["hash"],
        records[-1]["hash"],
    )
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    masked = tmp_path / "masked.csv"
    args: list[str | Path] = ["audit", "export", "--dir", journal_dir, "--out", masked]
    args += ["--format", "csv", "--mask"]
    code, _, err = run(*args)
    assert code == 1 and "DIALGUARD_AUDIT_MASK_KEY" in err and len(err.splitlines()) == 1
    key = {"DIALGUARD_AUDIT_MASK_KEY": "k" * 32}
    assert run(*args, "--since", "2026-11-30", "--until", "2026-11-30", env=key)[0] == 0
    text = masked.read_text()
    assert "+336" not in text and "06123456" not in text
    assert text.count("\n") == 11  # header and ten records
    assert json.loads(masked.with_name("masked.csv.manifest.json").read_text())["masked"]


# What a hostile dial string or caller ID makes a spreadsheet do, and what an E.164 number
# would become (33612345678: a number, its + lost).
HYPERLINK = '=HYPERLINK("http://evil.example/x","click")'
DDE = "=cmd|' /C calc'!A0"


def hostile_journal(directory: Path) -> list[dict[str, Any]]:
    records = [
        record(0, DAY1, "+33612345678", callerid=DDE, channel="\t=1+1"),
        record(1, DAY1 + 1000, "+33612345679", number_raw=HYPERLINK, campaign="@SUM(1+1)"),
        record(2, DAY1 + 2000, "+33612345670", reason="-2+3", principal="'=already quoted"),
        record(3, DAY1 + 3000, "+33612345671", uniqueid="\r=1", callerid="'plain"),
    ]
    write(directory, records)
    return audit_records(directory)


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def undone(cell: str) -> str:
    """What a program reading the CSV does: one leading quote off a defused cell."""
    return cell[1:] if cell.startswith("'") and cell.lstrip("'")[:1] in "=+-@\t\r" else cell


def assert_spreadsheet_safe(rows: list[dict[str, str]]) -> None:
    for row in rows:
        for name, value in row.items():
            assert value[:1] not in ("=", "+", "-", "@", "\t", "\r"), (name, value)


def test_csv_exports_prefix_cells_a_spreadsheet_would_run(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    records = hostile_journal(directory)
    out = tmp_path / "inspection.csv"
    code, _, err = run("audit", "export", "--dir", directory, "--format", "csv", "--out", out)
    assert (code, err) == (0, "")
    rows = csv_rows(out.read_bytes().decode())
    assert_spreadsheet_safe(rows)
    first, second, third, fourth = rows
    assert (first["callerid"], first["channel"]) == ("'" + DDE, "'\t=1+1")
    # E.164 numbers too: text in a spreadsheet, not the number 33612345678.
    assert (first["number"], first["number_raw"]) == ("'+33612345678", "'+33612345678")
    assert (second["number_raw"], second["campaign"]) == ("'" + HYPERLINK, "'@SUM(1+1)")
    assert (third["reason"], third["principal"]) == ("'-2+3", "''=already quoted")
    assert (fourth["uniqueid"], fourth["callerid"]) == ("'\r=1", "'plain")
    # Dropping one quote gives every value back; JSON columns start with [ or {, untouched.
    for original, row in zip(records, rows, strict=True):
        for name in ("number", "number_raw", "callerid", "channel", "campaign", "reason"):
            assert undone(row[name]) == str(original.get(name) or ""), name
        assert json.loads(row["rules"]) == original["rules"]

    # The JSON Lines export stays the journal's bytes, hostile text and all.
    jsonl = tmp_path / "inspection.jsonl"
    assert run("audit", "export", "--dir", directory, "--out", jsonl)[0] == 0
    assert jsonl.read_bytes() == b"".join(p.read_bytes() for p in sorted(directory.glob("*.jsonl")))

    code, found, err = run("audit", "search", "--dir", directory, "--csv")
    assert (code, err) == (0, "")
    assert csv_rows(found) == rows


def test_masked_csv_exports_are_spreadsheet_safe_too(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    records = hostile_journal(directory)
    out = tmp_path / "masked.csv"
    args: list[str | Path] = ["audit", "export", "--dir", directory, "--format", "csv"]
    code, _, err = run(*args, "--mask", "--out", out, env={"DIALGUARD_AUDIT_MASK_KEY": "k" * 32})
    assert (code, err) == (0, "")
    rows = csv_rows(out.read_bytes().decode())
    assert_spreadsheet_safe(rows)
    assert [row["number"][:2] for row in rows] == ["p-"] * 4  # masked, then nothing to defuse
    assert rows[0]["callerid"] == "'" + DDE  # the call centre's line is not masked
    assert rows[1]["campaign"] == "'@SUM(1+1)"
    assert "+3361234567" not in out.read_text(encoding="utf-8")
    assert len(rows) == len(records)


def test_tail_follows_new_records(journal_dir: Path) -> None:
    command = ["audit", "tail", "-n", "2", "-f", "--json", "--dir", str(journal_dir)]
    tail = subprocess.Popen([str(ROOT / ".venv/bin/dialguard"), *command], stdout=subprocess.PIPE)
    assert tail.stdout is not None
    try:
        last_two = [json.loads(tail.stdout.readline()) for _ in range(2)]
        assert [r["id"] for r in last_two] == [r["id"] for r in audit_records(journal_dir)[-2:]]
        write(journal_dir, [record(1, DAY2 + 60_000, id="live")])
        assert json.loads(tail.stdout.readline())["id"] == "live"
    finally:
        tail.kill()
        tail.wait()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["search", "--since", "yesterday"], 1, "--since 'yesterday' is not a date"),
        (["search", "--since", "2026-12-02", "--until", "2026-12-01"], 1, "is not before"),
        (["search", "--number", "12"], 1, "'12' is not a French"),
        (["search", "--colour"], 1, "No such option '--colour'"),
        (["verify", "--until", "31/12/2026"], 1, "is not a date"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    journal_dir: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    got, out, err = run("audit", *args, "--dir", journal_dir)
    assert got == code and message in err and len(err.splitlines()) == 1 and out == ""


def test_unreadable_journal_is_exit_2(tmp_path: Path) -> None:
    code, _, err = run("audit", "verify", "--dir", tmp_path / "nowhere")
    assert code == 2 and "no such audit directory" in err and len(err.splitlines()) == 1


def test_prune_keeps_the_rest_of_the_chain_checkable(journal_dir: Path) -> None:
    from dialguard.audit.reader import prune

    last_of_first = audit_records(journal_dir)[9]["hash"]
    removed = prune(journal_dir, 1, datetime(2026, 12, 5).date(), dry_run=False)
    assert [p.name for p in removed] == ["audit-2026-11-30.jsonl"]
    assert not (journal_dir / "audit-2026-11-30.idx").exists()
    assert (journal_dir / START_NAME).read_text().split() == [
        "audit-2026-11-30.jsonl",
        last_of_first,
    ]
    result = verify(journal_dir)
    assert result.intact and result.records == 5
    write(journal_dir, [record(1, DAY2 + 5000)])  # the writer carries on
    assert verify(journal_dir).intact
    assert (journal_dir / HEAD_NAME).exists()


def test_the_next_writer_tops_up_an_index_a_crash_left_short(journal_dir: Path) -> None:
    index = journal_dir / "audit-2026-12-01.idx"
    index.write_bytes(index.read_bytes()[: -2 * INDEX_ENTRY.size])  # entries lost in a crash
    write(journal_dir, [record(1, DAY2 + 9000, "+33699999999")])
    assert_index_matches(journal_dir)
