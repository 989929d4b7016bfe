"""Policy versions by effective date: the version in force on the call's callee-local date
decides; files with malformed or overlapping versions are refused in one line; the format
before versions is read as two versions; `dialguard policy show|check`."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dialguard import policy
from dialguard.config import ConfigError, load_policy
from dialguard.model import Campaign, Consent, Facts, OptoutResult, Purpose, Reason, Sector
from dialguard.numbers import normalise
from dialguard.policy import Regime, retroactive
from tests.cli_runner import run_dialguard

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config" / "policy" / "france.toml"
PARIS = ZoneInfo("Europe/Paris")
REUNION = ZoneInfo("Indian/Reunion")
CAMPAIGN = Campaign("test", "ACME", Purpose.PROSPECTING, Sector.GENERAL)

# A confirmed decree, as docs/policy.md shows it: one more version stating only what
# changes (cap 3, hours ending at 19:00, the 60-day block removed).
DECREE = """
[[versions]]
effective_from = 2027-01-04
title = "decree"
source = "Décret n° 2026-662 (example)"
[versions.refusal]
enabled = false
[versions.hours]
windows = [["10:00", "13:00"], ["14:00", "19:00"]]
[versions.frequency]
max_attempts = 3
"""


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory) -> policy.Policy:
    path = tmp_path_factory.mktemp("policy") / "france.toml"
    path.write_text(SHIPPED.read_text(encoding="utf-8") + DECREE, encoding="utf-8")
    return load_policy(path)


def paris(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


CONSENT = Consent(paris("2026-08-01T10:00"), None, "proof-1")
FRESH_CLEAR = OptoutResult(False, date(2026, 8, 1), "req-1")

# The same call on each side of each effective_from: (id, instant, facts, number,
# version that decides, reason).
SIDES = [
    # 2026-08-11, the consent regime: a fresh registry check suffices the day before only.
    ("optout-last-day", paris("2026-08-10T11:00"), Facts(optout=FRESH_CLEAR), "0612345678",
     "2023-03-01", Reason.OPTOUT_CLEAR),
    ("consent-first-day", paris("2026-08-11T11:00"), Facts(optout=FRESH_CLEAR), "0612345678",
     "2026-08-11", Reason.NO_CONSENT),
    ("consent-holds-after", paris("2026-08-11T11:00"), Facts(consent=CONSENT), "0612345678",
     "2026-08-11", Reason.CONSENT),
    ("consent-useless-before", paris("2026-08-10T11:00"), Facts(consent=CONSENT), "0612345678",
     "2023-03-01", Reason.OPTOUT_UNVERIFIED),
    # The date is the callee's: 23:30 in Paris on the 10th is already the 11th in Réunion
    # (an hour inside no calling window, but the version is the consent one).
    ("callee-local-date", paris("2026-08-10T23:30"), Facts(optout=FRESH_CLEAR), "0262123456",
     "2026-08-11", Reason.NO_CONSENT),
]  # fmt: skip

# Consents last a year: for the 2027 rows, one given in the autumn of 2026.
CONSENT_2026 = Consent(paris("2026-10-01T10:00"), None, "proof-2")
SIDES_2027 = [
    ("cap-4-before", "2026-12-31T11:00", Facts(consent=CONSENT_2026, attempts_30d=3),
     "2026-08-11", Reason.CONSENT),
    ("cap-3-after", "2027-01-04T11:00", Facts(consent=CONSENT_2026, attempts_30d=3),
     "2027-01-04", Reason.FREQUENCY_CAP),
    ("19h-before", "2026-12-31T19:30", Facts(consent=CONSENT_2026), "2026-08-11", Reason.CONSENT),
    ("19h-after", "2027-01-04T19:30", Facts(consent=CONSENT_2026), "2027-01-04",
     Reason.OUTSIDE_HOURS),
    ("refusal-before", "2026-12-31T11:00",
     Facts(consent=CONSENT_2026, refused_at=paris("2026-12-15T11:00")), "2026-08-11",
     Reason.RECENT_REFUSAL),
    ("refusal-after", "2027-01-04T11:00",
     Facts(consent=CONSENT_2026, refused_at=paris("2026-12-15T11:00")), "2027-01-04",
     Reason.CONSENT),
]  # fmt: skip


@pytest.mark.parametrize(
    ("moment", "facts", "number", "version", "reason"),
    [row[1:] for row in SIDES],
    ids=[row[0] for row in SIDES],
)
def test_the_version_in_force_on_the_callee_local_date_decides(
    three_versions: policy.Policy,
    moment: datetime,
    facts: Facts,
    number: str,
    version: str,
    reason: Reason,
) -> None:
    decision = policy.decide(CAMPAIGN, normalise(number), facts, moment, three_versions)
    assert decision.policy.version == version
    assert decision.policy.name == "france" and decision.policy.hash == three_versions.hash
    # Réunion's row is outside its hours (23:30 in Paris is 01:30 there): the legal basis,
    # decided before the calendar, shows the regime all the same.
    basis = next(r for r in decision.rules if r.rule == "legal_basis")
    assert reason in (decision.reason, basis.reason)


@pytest.mark.parametrize(
    ("when", "facts", "version", "reason"),
    [row[1:] for row in SIDES_2027],
    ids=[row[0] for row in SIDES_2027],
)
def test_a_decree_version_changes_the_calls_from_its_date(
    three_versions: policy.Policy, when: str, facts: Facts, version: str, reason: Reason
) -> None:
    decision = policy.decide(CAMPAIGN, normalise("0612345678"), facts, paris(when), three_versions)
    assert (decision.policy.version, decision.reason) == (version, reason)


def test_prepare_gives_the_version_and_its_cap(three_versions: policy.Policy) -> None:
    before = policy.prepare(
        CAMPAIGN, normalise("0612345678"), paris("2027-01-01T11:00"), three_versions
    )
    after = policy.prepare(
        CAMPAIGN, normalise("0612345678"), paris("2027-01-04T11:00"), three_versions
    )
    assert (before.version.max_attempts, after.version.max_attempts) == (4, 3)
    assert (before.ref.version, after.ref.version) == ("2026-08-11", "2027-01-04")


def test_a_later_version_inherits_what_it_does_not_set(three_versions: policy.Policy) -> None:
    optout, consent, decree = three_versions.versions
    assert consent.regime is Regime.CONSENT and decree.regime is Regime.CONSENT
    assert decree.days == consent.days and decree.local_days == consent.local_days
    assert decree.sector_bans == consent.sector_bans
    assert [name for name, _, _ in policy.differences(consent, decree)] == [
        "refusal_enabled",
        "windows",
        "max_attempts",
    ]
    assert [name for name, _, _ in policy.differences(optout, consent)] == ["regime"]


def test_before_the_first_version_the_first_answers(three_versions: policy.Policy) -> None:
    assert three_versions.at(date(2020, 1, 1)).id == "2023-03-01"
    assert three_versions.at(date(2099, 1, 1)).id == "2027-01-04"


# --- malformed versions: one line each --------------------------------------------------

HEAD = 'name = "p"\n'
FIRST = """
[[versions]]
effective_from = 2023-03-01
source = "s"
regime = "optout"
[versions.optout]
freshness_days = 30
[versions.consent]
max_validity_days = 365
[versions.refusal]
block_days = 60
[versions.hours]
days = ["mon"]
windows = [["10:00", "13:00"]]
[versions.holidays]
[versions.frequency]
max_attempts = 4
window_days = 30
"""


def version(effective_from: str, extra: str = "") -> str:
    return f'\n[[versions]]\neffective_from = {effective_from}\nsource = "s"\n{extra}'


BAD = [
    ("same-date", FIRST + version("2023-03-01"),
     "versions[1].effective_from: 2023-03-01 is not after versions[0]'s 2023-03-01: versions "
     "go in date order, one per date, each in force until the next"),
    ("out-of-order", FIRST + version("2022-01-01"),
     "versions[1].effective_from: 2022-01-01 is not after versions[0]'s 2023-03-01"),
    ("no-date", FIRST + '\n[[versions]]\nsource = "s"\n', "versions[1].effective_from: missing"),
    ("date-time", FIRST + version("2026-08-11T00:00:00"),
     "versions[1].effective_from: 2026-08-11T00:00:00 must be a date (YYYY-MM-DD), no time"),
    ("text-date", FIRST + version('"2026-08-11"'),
     "versions[1].effective_from: '2026-08-11' is not a date"),
    ("no-source", FIRST + "\n[[versions]]\neffective_from = 2026-08-11\n",
     "versions[1].source: missing"),
    ("empty-source", FIRST + '\n[[versions]]\neffective_from = 2026-08-11\nsource = " "\n',
     "versions[1].source: empty: name the text that puts this version in force"),
    ("no-regime", FIRST.replace('regime = "optout"\n', ""), "versions[0].regime: missing"),
    ("bad-regime", FIRST + version("2026-08-11", 'regime = "opt-in"'),
     "versions[1].regime: 'opt-in' is not one of optout, consent"),
    ("bad-value", FIRST + version("2026-08-11", "[versions.frequency]\nmax_attempts = 0"),
     "versions[1].frequency.max_attempts: 0 must be positive"),
    ("unknown-key", FIRST + version("2026-08-11", "regim = 'consent'"),
     "versions[1].regim: unknown key (known: caller_id, consent, effective_from, frequency, "),
    ("no-versions", "versions = []\n", "versions: at least one [[versions]] entry is needed"),
    ("mixed-formats", "consent_regime_from = 2026-08-11\n" + FIRST,
     "consent_regime_from: goes inside a [[versions]] entry, not at the top (docs/policy.md)"),
    ("values-at-top", "[frequency]\nmax_attempts = 4\n" + FIRST,
     "frequency: goes inside a [[versions]] entry, not at the top (docs/policy.md)"),
    ("missing-table", FIRST.replace("[versions.frequency]\nmax_attempts = 4\nwindow_days = 30\n",
     ""), "versions[0].frequency: missing table"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [r[1:] for r in BAD], ids=[r[0] for r in BAD])
def test_a_malformed_or_overlapping_version_is_refused_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(HEAD + text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_policy(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


def test_the_policy_check_command_refuses_it_too(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(HEAD + FIRST + version("2023-03-01"), encoding="utf-8")
    run = run_dialguard(["policy", "check", path])
    assert (run.code, run.out) == (1, "")
    assert run.err.startswith(f"dialguard: {path}: versions[1].effective_from: 2023-03-01 is not")
    assert run.err.count("\n") == 1


# --- the format before versions ---------------------------------------------------------


def old_format() -> str:
    """The shipped policy written the way it was before versions."""
    text = SHIPPED.read_text(encoding="utf-8")
    head, _, rest = text.partition("\n[[versions]]\n")
    body, _, _ = rest.partition("\n[[versions]]\n")
    kept = [
        line
        for line in body.splitlines()
        if not line.startswith(("effective_from", "title", "source", "regime"))
    ]
    values = "\n".join(kept).replace("[versions.", "[")
    return head + "\nconsent_regime_from = 2026-08-11\n" + values


def test_the_old_format_is_read_as_two_versions_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text(old_format(), encoding="utf-8")
    old = load_policy(path)
    new = load_policy(SHIPPED)
    assert [v.regime for v in old.versions] == [Regime.OPTOUT, Regime.CONSENT]
    assert old.versions[1].effective_from == date(2026, 8, 11)
    assert len(old.notes) == 1 and "convert it to [[versions]] (docs/policy.md)" in old.notes[0]
    for day in (date(2023, 3, 1), date(2026, 8, 10), date(2026, 8, 11), date(2027, 1, 1)):
        assert policy.differences(old.at(day), new.at(day)) == []
    # The same decisions, either side of the switch.
    for when in ("2026-08-10T11:00", "2026-08-11T11:00"):
        for facts in (Facts(optout=FRESH_CLEAR), Facts(consent=CONSENT)):
            a = policy.decide(CAMPAIGN, normalise("0612345678"), facts, paris(when), old)
            b = policy.decide(CAMPAIGN, normalise("0612345678"), facts, paris(when), new)
            assert (a.result, a.reason) == (b.result, b.reason)
    run = run_dialguard(["policy", "check", path])
    assert run.code == 0 and "valid" in run.out
    assert "consent_regime_from: the format before versions" in run.err


# --- versions starting in the past ------------------------------------------------------


def test_a_version_starting_in_the_past_is_allowed_but_reported(
    three_versions: policy.Policy,
) -> None:
    shipped = load_policy(SHIPPED)
    assert retroactive(shipped, three_versions, date(2027, 1, 3)) == []  # still ahead
    notes = retroactive(shipped, three_versions, date(2027, 1, 4))
    assert len(notes) == 1
    assert notes[0].startswith("version 2027-01-04 changes what was in force from 2027-01-04")
    assert "refusal_enabled, windows, max_attempts" in notes[0]
    assert retroactive(shipped, shipped, date(2030, 1, 1)) == []
    assert retroactive(None, shipped, date(2030, 1, 1)) == []


# --- the commands -----------------------------------------------------------------------


def test_policy_show_prints_the_version_in_force_and_its_changes() -> None:
    before = run_dialguard(["policy", "show", "--at", "2026-07-01"])
    assert before.code == 0, before.err
    assert 'version 2023-03-01 "opt-out regime' in before.out
    assert "until 2026-08-11 (excluded)" in before.out
    assert "the first version: nothing before it" in before.out
    after = run_dialguard(["policy", "show", "--at", "2026-08-11", "--json"])
    shown = json.loads(after.out)
    assert shown["version"] == "2026-08-11" and shown["previous"] == "2023-03-01"
    assert shown["changes"] == [{"value": "regime", "from": "optout", "to": "consent"}]
    assert shown["values"]["windows"] == [["10:00", "13:00"], ["14:00", "20:00"]]
    assert shown["values"]["days"] == ["mon", "tue", "wed", "thu", "fri"]
    bad = run_dialguard(["policy", "show", "--at", "July"])
    assert (bad.code, bad.err.count("\n")) == (1, 1)
    assert "--at 'July' is not a date" in bad.err


def test_policy_check_names_the_versions(tmp_path: Path) -> None:
    path = tmp_path / "next.toml"
    path.write_text(SHIPPED.read_text(encoding="utf-8") + DECREE, encoding="utf-8")
    run = run_dialguard(["policy", "check", path, "--json"])
    assert run.code == 0, run.err
    checked = json.loads(run.out)
    assert [v["version"] for v in checked["versions"]] == ["2023-03-01", "2026-08-11", "2027-01-04"]
    assert checked["compared_with"]["hash"] == load_policy(SHIPPED).hash
    assert checked["in_the_past"] == []  # 2027-01-04 is ahead of the machine's clock


def test_check_at_a_past_date_judges_under_the_version_then(tmp_path: Path) -> None:
    # An emergency number: decided without Redis, but named with the version in force.
    env = {"DIALGUARD_REDIS_URL": "redis://127.0.0.1:1/0"}
    for when, expected in (("2026-07-01T11:00", "2023-03-01"), ("2026-09-01T11:00", "2026-08-11")):
        run = run_dialguard(
            ["check", "112", "--campaign", "demo-prospecting", "--at", when, "--json"], env
        )
        assert run.code == 0, run.err
        assert json.loads(run.out)["policy"]["version"] == expected


def test_a_reload_says_when_a_version_changes_days_already_begun(
    three_versions: policy.Policy,
) -> None:
    from dataclasses import replace

    from dialguard.config import load_config
    from dialguard.reload import compare

    running = load_config(ROOT / "config" / "dialguard.toml", env={})
    new = replace(running, policy=three_versions)
    ahead = compare(running, new, date(2027, 1, 3)).applied
    assert len(ahead) == 1 and ahead[0].startswith("policy france ")
    begun = compare(running, new, date(2027, 1, 5)).applied
    assert len(begun) == 2
    assert begun[1].startswith("version 2027-01-04 changes what was in force from 2027-01-04")
