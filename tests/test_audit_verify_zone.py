"""`dialguard audit verify --since/--until` reads its dates as the other audit commands do:
in the policy's time zone (Europe/Paris for a `--dir` copy), not as UTC days.

The journal straddles midnight: a record at 23:30 UTC on 30 November is 00:30 in Paris on
1 December, and sits in the file of 30 November (files are UTC days).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from dialguard.cli import main
from tests.test_audit import record, write

ROOT = Path(__file__).resolve().parents[1]
MOMENTS = [
    datetime(2026, 11, 30, 22, 30, tzinfo=UTC),  # Paris 30 Nov 23:30  file 11-30
    datetime(2026, 11, 30, 23, 30, tzinfo=UTC),  # Paris 1 Dec 00:30   file 11-30
    datetime(2026, 12, 1, 10, 0, tzinfo=UTC),  # Paris 1 Dec 11:00     file 12-01
    datetime(2026, 12, 1, 23, 30, tzinfo=UTC),  # Paris 2 Dec 00:30    file 12-01
    datetime(2026, 12, 2, 10, 0, tzinfo=UTC),  # Paris 2 Dec 11:00     file 12-02
]


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "audit"

    write(directory, [record(n, int(m.timestamp() * 1000)) for n, m in enumerate(MOMENTS)])
    names = sorted(path.name for path in directory.glob("audit-*.jsonl"))
    assert names == ["audit-2026-11-30.jsonl", "audit-2026-12-01.jsonl", "audit-2026-12-02.jsonl"]
    return directory


def tamper_with_paris_first_of_december(directory: Path) -> None:
    """Edit the record of 00:30 Paris time on 1 December (second line of the 30th's file)."""
    path = directory / "audit-2026-11-30.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    assert b'"result":"ALLOW"' in lines[1]
    lines[1] = lines[1].replace(b'"result":"ALLOW"', b'"result":"DENY!"')
    path.write_bytes(b"".join(lines))


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    with (
        mock.patch.object(sys, "argv", ["dialguard", *map(str, args)]),
        mock.patch.dict(os.environ, {"COLUMNS": "200"}),
        pytest.raises(SystemExit) as exit_,
    ):
        main()
    captured = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err


def verify_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> dict[str, Any]:
    code, out, err = run(capsys, "audit", "verify", "--json", *args)
    assert (code, err) == (0, ""), (out, err)
    data: dict[str, Any] = json.loads(out)
    return data


def test_a_paris_day_takes_the_utc_files_that_hold_it(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day: list[str | Path] = ["--dir", journal_dir, "--since", "2026-12-01", "--until", "2026-12-01"]
    # Paris 1 Dec is 30 Nov 23:00 UTC to 1 Dec 23:00 UTC: the files of 30 Nov and 1 Dec,
    # and the next one (a record written just after midnight UTC can land there).
    assert verify_json(capsys, *day)["files"] == 3
    first_hour = ["--since", "2026-12-01T00:00", "--until", "2026-12-01T01:00"]
    assert verify_json(capsys, "--dir", journal_dir, *first_hour)["files"] == 2
    # 30 Nov in Paris ends at 23:00 UTC: its files are those of 30 Nov and 1 Dec.
    late = ["--since", "2026-11-30", "--until", "2026-11-30"]
    assert verify_json(capsys, "--dir", journal_dir, *late)["files"] == 2
    # An explicit offset is taken as written.
    utc = ["--since", "2026-12-01T00:00+00:00", "--until", "2026-12-01T12:00+00:00"]
    assert verify_json(capsys, "--dir", journal_dir, *utc)["files"] == 2

    tamper_with_paris_first_of_december(journal_dir)
    code, out, err = run(capsys, "audit", "verify", *day)
    assert code == 3, (out, err)
    assert out.startswith("NOT INTACT after 1 good records: audit-2026-11-30.jsonl line 2")
    assert "its content does not match its hash: edited" in out


def test_the_zone_is_the_policy_s(
    journal_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Cayenne is UTC-3: its 1 December is 03:00 UTC on 1 Dec to 03:00 UTC on 2 Dec, and
    # the record edited (20:30 on 30 November there) is outside it.
    policy = tmp_path / "cayenne.toml"
    text = (ROOT / "config" / "policy" / "france.toml").read_text(encoding="utf-8")
    paris = 'default_timezone = "Europe/Paris"'
    assert paris in text
    policy.write_text(text.replace(paris, 'default_timezone = "America/Cayenne"'), "utf-8")
    config = tmp_path / "dialguard.toml"
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    text = text.replace('dir = "../var/audit"', f"dir = {json.dumps(str(journal_dir))}")
    text = text.replace('file = "policy/france.toml"', f"file = {json.dumps(str(policy))}")
    config.write_text(text, encoding="utf-8")
    tamper_with_paris_first_of_december(journal_dir)

    day: list[str | Path] = ["--since", "2026-12-01", "--until", "2026-12-01", "--config", config]
    data = verify_json(capsys, *day)
    assert (data["intact"], data["files"], data["records"]) == (True, 2, 3)
    # The same day read in Paris (a --dir copy) takes in the edited record.
    code, out, _ = run(capsys, "audit", "verify", *day[:4], "--dir", journal_dir)
    assert code == 3 and "audit-2026-11-30.jsonl line 2" in out


def test_bad_dates_are_one_line_and_exit_1(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "audit", "verify", "--dir", journal_dir, "--since", "30/11")
    assert (code, out) == (1, "")
    assert err == (
        "dialguard: --since '30/11' is not a date (2026-11-30) or date-time (2026-11-30T14:00)\n"
    )
    args = ["--since", "2026-12-02", "--until", "2026-12-01"]
    code, out, err = run(capsys, "audit", "verify", "--dir", journal_dir, *args)
    assert (code, out) == (1, "")
    assert err == "dialguard: --since 2026-12-02 is not before --until 2026-12-01\n"
