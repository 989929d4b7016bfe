"""The caller-ID rule (C. consommation L221-17; ARCEP décision 2022-1583): the number a call
presents must be shown, one the company may present, never a mobile, and for an automated
system a verified number (NPV), a special-rate number but 089, or a short number."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dialguard import policy
from dialguard.callerids import CallerIds, parse_entry
from dialguard.config import ConfigError, load_config, load_policy
from dialguard.model import (
    CallerId,
    CallRequest,
    Campaign,
    Consent,
    Facts,
    Outcome,
    Purpose,
    Reason,
    Result,
    Sector,
)
from dialguard.numbers import normalise
from tests.agi.test_server import agi_server, load_consent
from tests.cli_runner import run_dialguard
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
POLICY = load_policy(ROOT / "config" / "policy" / "france.toml")
PARIS = ZoneInfo("Europe/Paris")
MONDAY = datetime(2026, 11, 30, 11, 0, tzinfo=PARIS)
FACTS = Facts(consent=Consent(MONDAY - timedelta(days=30), None, "crm:1"))

AUTHORISED = CallerIds(
    (
        parse_entry("01 47 00 00 00..01 47 00 00 99", "assignment A-1"),
        parse_entry("+33 9 48 12 34 56", "npv N-7"),
        parse_entry("09 47 51 00 00", "overseas O-3"),  # an overseas NPV block (Guadeloupe)
        parse_entry("0162000000", "expired E-9", date(2024, 1, 1), date(2026, 6, 30)),
        parse_entry("0810 00 00 01", "special S-2"),
        parse_entry("0899 00 00 01", "premium P-1"),
        parse_entry("0612345678", "mobile M-1"),  # listed, and still never shown
    )
)
AGENTS = Campaign("agents", "ACME", Purpose.PROSPECTING, Sector.GENERAL, caller_ids=AUTHORISED)
DIALER = replace(AGENTS, name="dialer", automated=True)
NO_LIST_DIALER = replace(DIALER, caller_ids=None)  # automated, any verified number will do
UNCHECKED = Campaign("plain", "ACME", Purpose.PROSPECTING, Sector.GENERAL)

MISSING = Reason.CALLER_ID_MISSING
FORBIDDEN = Reason.CALLER_ID_FORBIDDEN
NOT_AUTHORISED = Reason.CALLER_ID_NOT_AUTHORISED

CASES = [
    # id, campaign, presented, agi_callingpres, reason (None: the rule passes), its ref
    ("withheld-presentation", AGENTS, "0147000001", "32", MISSING, None),
    ("unavailable-presentation", AGENTS, "0147000001", "67", MISSING, None),
    ("unknown", AGENTS, "unknown", "0", MISSING, None),
    ("anonymous", AGENTS, "Anonymous", "0", MISSING, None),
    ("empty", AGENTS, "", "", MISSING, None),
    ("authorised-fixed", AGENTS, "01 47 00 00 42", "0", None, "assignment A-1"),
    ("authorised-e164", AGENTS, "+33147000099", "0", None, "assignment A-1"),
    ("just-outside-the-range", AGENTS, "0147000100", "0", NOT_AUTHORISED, None),
    ("unauthorised", AGENTS, "0155555555", "0", NOT_AUTHORISED, None),
    ("not-a-number", AGENTS, "ACME Sales", "0", NOT_AUTHORISED, None),
    ("mobile", AGENTS, "0612345678", "0", FORBIDDEN, None),
    ("mobile-unlisted", AGENTS, "0712345678", "0", FORBIDDEN, None),
    ("overseas-mobile", AGENTS, "0690123456", "0", FORBIDDEN, None),
    ("expired-authorisation", AGENTS, "0162000000", "0", NOT_AUTHORISED, "expired E-9"),
    ("npv-for-an-automated-campaign", DIALER, "09 48 12 34 56", "0", None, "npv N-7"),
    ("overseas-npv-block", DIALER, "0947510000", "0", None, "overseas O-3"),
    # A geographic number, authorised: an automated system may not show it. FORBIDDEN wins.
    ("geographic-for-an-automated-campaign", DIALER, "0147000042", "0", FORBIDDEN, None),
    ("unlisted-geographic-automated", DIALER, "0155555555", "0", FORBIDDEN, None),
    ("special-for-an-automated-campaign", DIALER, "0810000001", "0", None, "special S-2"),
    ("premium-089-for-an-automated-campaign", DIALER, "0899000001", "0", FORBIDDEN, None),
    ("npv-unlisted", DIALER, "0948999999", "0", NOT_AUTHORISED, None),
    ("npv-no-list", NO_LIST_DIALER, "0163000000", "0", None, None),
    ("short-number-no-list", NO_LIST_DIALER, "3900", "0", None, None),
    ("withheld-automated", NO_LIST_DIALER, "unknown", "0", MISSING, None),
    ("campaign-with-neither", UNCHECKED, "unknown", "32", None, None),
]


@pytest.mark.parametrize(
    ("campaign", "presented", "pres", "reason", "ref"),
    [row[1:] for row in CASES],
    ids=[row[0] for row in CASES],
)
def test_caller_id_cases(
    campaign: Campaign, presented: str, pres: str, reason: Reason | None, ref: str | None
) -> None:
    caller = CallerId.of(
        CallRequest("0612345678", campaign.name, callerid=presented, callingpres=pres)
    )
    decision = policy.decide(
        campaign, normalise("0612345678"), FACTS, MONDAY, POLICY, caller=caller
    )
    rule = next(r for r in decision.rules if r.rule == "caller_id")
    if reason is None:
        assert rule.outcome is Outcome.PASS, rule
        assert (decision.result, decision.reason) == (Result.ALLOW, Reason.CONSENT)
    else:
        assert (decision.result, decision.reason, rule.reason) == (Result.DENY, reason, reason)
        # Denied before the facts: no slot is reserved for a call that will not be placed.
        prepared = policy.prepare(campaign, normalise("0612345678"), MONDAY, POLICY, caller=caller)
        assert not prepared.would_count
    if ref is not None:
        assert decision.evidence["caller_id"]["ref"] == ref
    elif reason is None and campaign.caller_ids is None:
        assert "ref" not in decision.evidence.get("caller_id", {})


def test_the_rule_reads_no_facts_and_comes_before_them() -> None:
    names = [rule.name for rule in policy.RULES]
    assert names.index("caller_id") == names.index("number") + 1
    assert not next(r for r in policy.RULES if r.name == "caller_id").needs_facts
    # An emergency number is never blocked, whatever the caller ID.
    caller = CallerId("unknown", restricted=True)
    decision = policy.decide(AGENTS, normalise("112"), Facts(), MONDAY, POLICY, caller=caller)
    assert decision.reason is Reason.EMERGENCY


def test_the_verified_ranges_are_policy_values() -> None:
    caller = CallerId("0948123456")
    none_verified = POLICY.with_values(caller_id_verified_prefixes=())
    decision = policy.decide(
        DIALER, normalise("0612345678"), FACTS, MONDAY, none_verified, caller=caller
    )
    assert decision.reason is FORBIDDEN


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"0162000000..+262 262 00 00 00"', "both ends of a range must be numbers of one plan"),
        ('"0162000099..0162000000"', "the range ends before it starts"),
        ('"0162000000..0172000000"', "more than 1,000,000 numbers: a digit missing?"),
        ('"ACME"', "'ACME': 'ACME' contains characters other than digits"),
        ("42", '42 is not "NUMBER"'),
        ('{numbers = "0162000000", refs = "x"}', "caller_ids.refs: unknown key"),
        (
            '{numbers = "0162000000", valid_from = 2026-01-01, valid_until = 2025-01-01}',
            "valid until 2025-01-01, before 2026-01-01",
        ),
    ],
)
def test_bad_caller_ids_are_refused_in_one_line(tmp_path: Path, entry: str, message: str) -> None:
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    text = text.replace('"policy/france.toml"', f'"{ROOT / "config" / "policy" / "france.toml"}"')
    text += (
        f'\n[campaigns.bad]\nprincipal = "ACME"\npurpose = "prospecting"\ncaller_ids = [{entry}]\n'
    )
    path = tmp_path / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert str(error.value).startswith(f"{path}: campaigns.bad.caller_ids")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_check_takes_the_caller_id() -> None:
    # Denied before Redis is read: the answer needs no Redis (port 1 answers nothing).
    env = {"DIALGUARD_REDIS_URL": "redis://127.0.0.1:1/0"}
    base = ["check", "0612345678", "--campaign", "demo-dialer", "--at", "2026-11-30T11:00"]
    for extra, reason in (
        ([], "CALLER_ID_MISSING"),
        (["--caller-id", "06 11 22 33 44"], "CALLER_ID_FORBIDDEN"),
        (["--caller-id", "0162000000"], "CALLER_ID_NOT_AUTHORISED"),  # expired 2026-06-30
    ):
        run = run_dialguard([*base, *extra, "--json"], env)
        assert run.code == 0, run.err
        assert f'"reason": "{reason}"' in run.out


# --- end to end through FastAGI -----------------------------------------------------------


async def test_fastagi_checks_agi_callerid_and_the_dialplan_argument(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with agi_server(clean_redis.url, tmp_path / "audit") as agi:
        await load_consent(agi.admin)
        npv = {"agi_callerid": "0948120042", "agi_callingpres": "0"}
        allowed = await agi.call("0612345678", "demo-dialer", env_overrides=npv)
        assert allowed.variables["DIALGUARD_RESULT"] == "ALLOW", allowed.variables
        record = agi.record(allowed.variables["DIALGUARD_ID"])
        assert record["callerid"] == "0948120042"
        assert record["evidence"]["caller_id"] == {
            "number": "+33948120042",
            "authorised": True,
            "ref": "assignment ACME-2024-017",
        }
        # agi_callerid as Asterisk sends it by default in the tests: a geographic number.
        geographic = await agi.call("0612345678", "demo-dialer")
        assert geographic.variables["DIALGUARD_REASON"] == "CALLER_ID_FORBIDDEN"
        # The dialplan's third argument wins over agi_callerid.
        passed = await agi.call("0612345678", "demo-dialer", "0948120043")
        assert passed.variables["DIALGUARD_RESULT"] == "ALLOW", passed.variables
        assert agi.record(passed.variables["DIALGUARD_ID"])["callerid"] == "0948120043"
        # Presentation restricted (CALLERID(num-pres)=prohib): withheld, whatever the number.
        hidden = {"agi_callerid": "0948120042", "agi_callingpres": "32"}
        withheld = await agi.call("0612345678", "demo-dialer", env_overrides=hidden)
        assert withheld.variables["DIALGUARD_REASON"] == "CALLER_ID_MISSING"
        unknown = await agi.call(
            "0612345678", "demo-dialer", env_overrides={"agi_callerid": "unknown"}
        )
        assert unknown.variables["DIALGUARD_REASON"] == "CALLER_ID_MISSING"
        # A campaign with no caller-ID settings does not look at it.
        plain = await agi.call(
            "0612345678", "demo-prospecting", env_overrides={"agi_callerid": "unknown"}
        )
        assert plain.variables["DIALGUARD_RESULT"] == "ALLOW", plain.variables
        await agi.drained()
        assert await agi.attempts("0612345678") == 3  # the denials took no slot


# --- caller IDs imported from a file (caller_ids_file, `dialguard import callerid`) -------

CALLERID_CSV = (
    "number,ref,valid_from,valid_until,principal\n"
    '"01 48 00 00 00..01 48 00 00 99",assignment ACME-2025-031,2025-01-01,,ACME\n'
    "+33 1 49 00 00 00,assignment ACME-2019-004,2019-01-01,2020-12-31,ACME\n"
    "01 50 00 00 00,assignment OTHER-1,,,OTHER\n"  # another company's number
)


def campaign_with_file(tmp_path: Path, csv_text: str) -> Path:
    """The shipped configuration and a campaign `imported` reading callerids.csv."""
    (tmp_path / "callerids.csv").write_text(csv_text, encoding="utf-8")
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    text = text.replace('"policy/france.toml"', f'"{ROOT / "config" / "policy" / "france.toml"}"')
    text += (
        '\n[campaigns.imported]\nprincipal = "ACME"\npurpose = "prospecting"\n'
        'caller_ids_file = "callerids.csv"\n'
    )
    path = tmp_path / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_campaign_takes_its_principals_numbers_from_the_file(tmp_path: Path) -> None:
    config = load_config(campaign_with_file(tmp_path, CALLERID_CSV), env={})
    campaign = config.campaigns["imported"]
    assert campaign.caller_ids is not None and len(campaign.caller_ids.entries) == 2
    number = normalise("0612345678")

    def decide(shown: str) -> tuple[Result, Reason, dict[str, object]]:
        caller = CallerId(shown)
        made = policy.decide(campaign, number, FACTS, MONDAY, POLICY, caller=caller)
        return made.result, made.reason, dict(made.evidence["caller_id"])

    assert decide("01 48 00 00 42") == (
        Result.ALLOW,
        Reason.CONSENT,
        {"number": "+33148000042", "authorised": True, "ref": "assignment ACME-2025-031"},
    )
    # Expired on 2020-12-31: denied, the authorisation named in the evidence.
    assert decide("0149000000") == (
        Result.DENY,
        NOT_AUTHORISED,
        {"number": "+33149000000", "authorised": False, "ref": "assignment ACME-2019-004"},
    )
    # Assigned to another company: not this campaign's to show.
    assert decide("0150000000")[:2] == (Result.DENY, NOT_AUTHORISED)


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("number,ref\n0148000000,a\n", "line 1: header 'number,ref': expected"),
        ("number,ref,valid_from,valid_until\n0148000000,,,\n", "line 2: no ref"),
        ("number,ref,valid_from,valid_until\n0148000000,a,2025-13-01,\n", "line 2: valid_from"),
        ("number,ref,valid_from,valid_until\n0148000000,a,,\n01 4x,b,,\n", "line 3: '01 4x'"),
        ("number,ref,valid_from,valid_until\n0148000000,a\n", "line 2: 2 fields, expected 4"),
        ("", "empty: expected a header"),
    ],
)
def test_a_bad_caller_id_file_is_refused_in_one_line(
    tmp_path: Path, csv_text: str, message: str
) -> None:
    path = campaign_with_file(tmp_path, csv_text)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    said = str(error.value)
    assert said.startswith(f"{path}: campaigns.imported.caller_ids_file: {tmp_path}/callerids.csv")
    assert message in said and "\n" not in said
    run = run_dialguard(["import", "callerid", tmp_path / "callerids.csv"])
    assert run.code == 1 and run.out == ""
    assert run.err.startswith("dialguard: ") and message in run.err
    assert run.err.count("\n") == 1


def test_import_callerid_says_what_the_file_holds_and_who_reads_it(tmp_path: Path) -> None:
    config = campaign_with_file(tmp_path, CALLERID_CSV)
    run = run_dialguard(
        [
            "import",
            "callerid",
            tmp_path / "callerids.csv",
            "--principal",
            "ACME",
            "--config",
            config,
        ]
    )
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].endswith(
        "2 entries of ACME (101 numbers): 1 valid today, 1 expired, 0 not valid yet"
    )
    assert lines[1].endswith("read by campaigns imported (at start and on reload)")
    refused = run_dialguard(["import", "callerid", tmp_path / "callerids.csv", "--replace"])
    assert refused.code == 1 and "callerid takes --principal and --config only" in refused.err
