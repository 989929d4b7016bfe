"""Shadow mode (`mode = "shadow"` per campaign): decided, counted and audited as usual,
answered ALLOW (SHADOW_<reason> for a denial), and visible in `audit stats`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from dialguard.config import Config, ConfigError, load_config
from dialguard.model import FailMode, Mode
from tests.agi.test_server import (
    MONDAY,
    NUMBER,
    NUMBER_RAW,
    REDIS_DOWN,
    agi_server,
    assert_clean,
    consent_given,
)
from tests.cli_runner import run_dialguard
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def shadow(*names: str, fail_open: bool = False) -> Callable[[Config], Config]:
    def configure(config: Config) -> Config:
        campaigns = dict(config.campaigns)
        for name in names:
            changed = replace(campaigns[name], mode=Mode.SHADOW)
            if fail_open:
                changed = replace(changed, fail_mode=FailMode.OPEN)
            campaigns[name] = changed
        return replace(config, campaigns=campaigns)

    return configure


async def test_a_denial_is_answered_allow_with_its_reason_and_audited_as_a_denial(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit"
    async with agi_server(clean_redis.url, audit, configure=shadow("demo-prospecting")) as agi:
        await agi.admin.dnc_add(NUMBER, "asked during a call", MONDAY - timedelta(days=3))
        result = await agi.call(NUMBER_RAW, "demo-prospecting")
        assert_clean(result)
        assert result.variables["DIALGUARD_RESULT"] == "ALLOW"
        assert result.variables["DIALGUARD_REASON"] == "SHADOW_INTERNAL_DNC"
        record = agi.record(result.variables["DIALGUARD_ID"])
        assert (record["result"], record["reason"]) == ("DENY", "INTERNAL_DNC")
        assert record["mode"] == "shadow"
        assert record["answer"] == {"result": "ALLOW", "reason": "SHADOW_INTERNAL_DNC"}
        # The call went out: it holds one of the 30-day slots, as a real call does.
        await agi.drained()
        assert await agi.attempts(NUMBER_RAW) == 1

        # An enforcing campaign of the same principal is not affected.
        enforced = await agi.call(NUMBER_RAW, "demo-energy")
        assert enforced.variables["DIALGUARD_RESULT"] == "DENY"
        assert "mode" not in agi.record(enforced.variables["DIALGUARD_ID"])


async def test_an_allowed_call_in_shadow_mode_is_answered_as_usual(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit"
    async with agi_server(clean_redis.url, audit, configure=shadow("demo-prospecting")) as agi:
        await consent_given(agi.admin)
        result = await agi.call(NUMBER_RAW, "demo-prospecting")
        assert result.variables["DIALGUARD_RESULT"] == "ALLOW"
        assert result.variables["DIALGUARD_REASON"] == "CONSENT"
        record = agi.record(result.variables["DIALGUARD_ID"])
        assert record["mode"] == "shadow" and "answer" not in record


async def test_every_shadow_call_counts_past_the_cap_and_the_cap_sees_them(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit"
    async with agi_server(clean_redis.url, audit, configure=shadow("demo-prospecting")) as agi:
        results = [await agi.call(NUMBER_RAW, "demo-prospecting") for _ in range(6)]
        assert {r.variables["DIALGUARD_RESULT"] for r in results} == {"ALLOW"}
        assert {r.variables["DIALGUARD_REASON"] for r in results} == {"SHADOW_NO_CONSENT"}
        await agi.drained()
        assert await agi.attempts(NUMBER_RAW) == 6  # every call placed, past the cap too
        # Once a consent arrives, the cap already holds the calls shadow mode let out.
        await consent_given(agi.admin)
        capped = await agi.call(NUMBER_RAW, "demo-prospecting")
        assert capped.variables["DIALGUARD_REASON"] == "SHADOW_FREQUENCY_CAP"
        await agi.drained()
        assert await agi.attempts(NUMBER_RAW) == 7


async def test_redis_down_is_answered_allow_in_shadow_mode(tmp_path: Path) -> None:
    async with agi_server(
        REDIS_DOWN, tmp_path / "audit", configure=shadow("demo-prospecting")
    ) as agi:
        result = await agi.call(NUMBER_RAW, "demo-prospecting")
        assert result.variables["DIALGUARD_RESULT"] == "ALLOW"
        assert result.variables["DIALGUARD_REASON"] == "SHADOW_STORE_UNAVAILABLE"
        record = agi.record(result.variables["DIALGUARD_ID"])
        assert record["degraded"] and record["result"] == "DENY"


async def test_audit_stats_shows_what_would_have_been_blocked(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit"
    async with agi_server(clean_redis.url, audit, configure=shadow("demo-prospecting")) as agi:
        await agi.admin.dnc_add(NUMBER, "asked", MONDAY - timedelta(days=3))
        await agi.call(NUMBER_RAW, "demo-prospecting")
        await agi.call(NUMBER_RAW, "demo-prospecting")
        await agi.call(NUMBER_RAW, "demo-energy")  # enforcing: a real denial
    result = run_dialguard(["audit", "stats", "--dir", audit, "--json"])
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert (summary["denied"], summary["shadowed"]) == (3, 2)
    [row] = [r for r in summary["by_reason"] if r["reason"] == "INTERNAL_DNC"]
    assert (row["decisions"], row["shadowed"]) == (3, 2)
    campaigns = {r["campaign"]: r for r in summary["by_campaign"]}
    assert campaigns["demo-prospecting"]["shadowed"] == 2
    assert campaigns["demo-energy"]["shadowed"] == 0
    human = run_dialguard(["audit", "stats", "--dir", audit])
    assert "2 of the denials were answered ALLOW in shadow mode" in human.out
    found = run_dialguard(
        ["audit", "search", "--dir", audit, "--campaign", "demo-prospecting"],
        env={"COLUMNS": "200"},
    )
    assert found.out.count("INTERNAL_DNC (shadow: answered ALLOW)") == 2


def test_check_says_what_shadow_mode_would_answer(tmp_path: Path) -> None:
    config = tmp_path / "dialguard.toml"
    text = (ROOT / "config" / "dialguard.toml").read_text()
    text = text.replace('dir = "../var/audit"', f"dir = {json.dumps(str(tmp_path / 'audit'))}")
    text = text.replace('file = "policy/france.toml"', f'file = "{ROOT}/config/policy/france.toml"')
    text = text.replace(
        '[campaigns.demo-survey]\nprincipal = "ACME"',
        '[campaigns.demo-survey]\nmode = "shadow"\nprincipal = "ACME"',
    )
    config.write_text(text)
    # An invalid number needs no Redis: the decision is the same everywhere.
    result = run_dialguard(
        ["check", "0000", "--campaign", "demo-survey", "--json", "--config", config],
        env={"DIALGUARD_REDIS_URL": REDIS_DOWN},
    )
    assert result.code == 1, result.err  # an input error, after the decision is printed
    decision = json.loads(result.out)
    assert (decision["result"], decision["reason"]) == ("DENY", "INVALID_NUMBER")
    assert decision["mode"] == "shadow"
    assert decision["answer"] == {"result": "ALLOW", "reason": "SHADOW_INVALID_NUMBER"}


@pytest.mark.parametrize(
    ("value", "message"),
    [('"watch"', "'watch' is not one of enforce, shadow"), ("1", "1 is not a str")],
)
def test_a_bad_mode_is_refused_in_one_line(tmp_path: Path, value: str, message: str) -> None:
    config = tmp_path / "dialguard.toml"
    text = (ROOT / "config" / "dialguard.toml").read_text()
    text = text.replace('file = "policy/france.toml"', f'file = "{ROOT}/config/policy/france.toml"')
    text = text.replace(
        '[campaigns.demo-survey]\nprincipal = "ACME"',
        f'[campaigns.demo-survey]\nmode = {value}\nprincipal = "ACME"',
    )
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config, env={})
    assert str(caught.value) == f"{config}: campaigns.demo-survey.mode: {message}"


def test_the_sample_configuration_enforces() -> None:
    config = load_config(ROOT / "config" / "dialguard.toml", env={})
    assert {c.mode for c in config.campaigns.values()} == {Mode.ENFORCE}
