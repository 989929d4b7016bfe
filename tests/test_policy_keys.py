"""A misspelt key in a table of the policy file is refused, in the one-line style of the
main configuration (`file: table.key: unknown key (known: ...)`), never ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialguard.config import ConfigError, load_policy
from tests.cli_runner import run_dialguard

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "config" / "policy" / "france.toml"


def policy_with(tmp_path: Path, after: str, line: str) -> Path:
    """The shipped policy with `line` added right after the line `after`."""
    text = POLICY.read_text(encoding="utf-8")
    assert f"\n{after}\n" in text
    path = tmp_path / "france.toml"
    path.write_text(text.replace(f"\n{after}\n", f"\n{after}\n{line}\n", 1), encoding="utf-8")
    return path


def test_the_shipped_policy_has_no_unknown_key() -> None:
    policy = load_policy(POLICY)
    assert policy.notes == ()
    assert all(version.refusal_enabled for version in policy.versions)


@pytest.mark.parametrize(
    ("after", "line", "message"),
    [
        (
            "[versions.refusal]",
            "enabeld = false",
            "versions[0].refusal.enabeld: unknown key (known: block_days, enabled)",
        ),
        (
            "[versions.optout]",
            "freshness_day = 10",
            "versions[0].optout.freshness_day: unknown key (known: freshness_days, "
            "suppress_in_consent_regime)",
        ),
        (
            "[versions.consent]",
            "max_validity = 90",
            "versions[0].consent.max_validity: unknown key (known: ",
        ),
        (
            "[versions.hours]",
            'day = ["mon"]',
            "versions[0].hours.day: unknown key (known: days, windows)",
        ),
        (
            "[versions.holidays]",
            "nationl = false",
            "versions[0].holidays.nationl: unknown key (known: local, ",
        ),
        (
            "[versions.frequency]",
            "max_attempt = 2",
            "versions[0].frequency.max_attempt: unknown key (known: ",
        ),
        (
            "[versions.sectors.cpf]",
            "banned_form = 2030-01-01",
            "versions[0].sectors.cpf.banned_form: unknown key (known: banned_from)",
        ),
        (
            "[versions.holidays.local_days]",
            're = ["12-20"]',
            "versions[0].holidays.local_days.re: not a territory code (ISO 3166, e.g. FR, RE)",
        ),
    ],
)
def test_an_unknown_key_in_a_policy_table_is_refused(
    tmp_path: Path, after: str, line: str, message: str
) -> None:
    path = policy_with(tmp_path, after, line)
    with pytest.raises(ConfigError) as error:
        load_policy(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


def test_the_command_says_it_in_one_line(tmp_path: Path) -> None:
    policy = policy_with(tmp_path, "[versions.refusal]", "enabeld = false")
    config = tmp_path / "dialguard.toml"
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    config.write_text(text.replace('"policy/france.toml"', f'"{policy}"'), encoding="utf-8")
    run = run_dialguard(
        ["check", "0612345678", "--campaign", "demo-prospecting"],
        # Port 1: should the policy load, nothing there answers (never the machine's Redis).
        {"DIALGUARD_CONFIG": str(config), "DIALGUARD_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert (run.code, run.out) == (1, "")
    assert (
        run.err
        == f"dialguard: {policy}: versions[0].refusal.enabeld: unknown key (known: block_days, "
        "enabled)\n"
    )
