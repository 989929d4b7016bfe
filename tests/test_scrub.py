"""`dialguard scrub`: a lead file decided before a campaign, against a real Redis.

The data is set up as an operator would (imports, `dnc add`, `consent withdraw`,
`check --record` for attempts; a refusal dated ahead of the clock through the operator's
store, as `outcome` refuses future dates), then one lead file where every reason a scrub
can give appears, each row saying what it expects: the report must give that reason and
`callable_from`, the callable file must be the input's rows byte for byte, nothing may be
counted, and one `scrub` record is all the journal gains. Then the same leads through
`check`, the files refused, Redis down, and the quick path held to `policy.decide`.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard import lawful
from dialguard import policy as rules
from dialguard.config import load_config, load_policy
from dialguard.model import Campaign, Facts, Purpose, Sector
from dialguard.numbers import InvalidNumber, normalise
from dialguard.scrub import Judge, Verdict, _batches, scrub_campaign
from dialguard.store import Store
from tests.journal import audit_records
from tests.redis_server import RedisServer, running_redis
from tests.test_cli import PROSPECT, REDIS_DOWN, Cli, make_config, toml_dumps
from tests.test_lawful import facts_at
from tests.test_replay_outcome import campaigns, facts, policies

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = load_policy(ROOT / "config" / "policy" / "france.toml")
PARIS = ZoneInfo("Europe/Paris")
ENERGY = "t-energy"
# A Thursday, 15:30 in Paris: 09:30 in Guadeloupe (a local holiday there, 27 May) and
# Martinique (before its window), inside the afternoon window in metropolitan France.
WHEN = "2027-05-27T15:30"
WHEN_OPTOUT = "2026-06-02T10:30"  # a Tuesday under the opt-out regime

HEADER = "\ufeffid;nom;téléphone;ville;attendu\r\n"
# (row as written, without its CRLF; the reason expected at WHEN for PROSPECT; its
# callable_from, "" when time alone does not make it callable)
ROWS: list[tuple[str, str, str]] = [
    ("1;Hélène Dupont;06 11 00 00 01;Paris;consent", "CONSENT", ""),
    ("2;Jean Martin;+33611000002;Lyon;do-not-call, imported", "INTERNAL_DNC", ""),
    ("3;Léa Bernard;0033611000003;Nantes;nothing known", "NO_CONSENT", ""),
    ("4;Marc Petit;06.11.00.00.04;Lille;consent expired", "CONSENT_EXPIRED", ""),
    ("5;Anne Roux;0611000005;Metz;consent withdrawn", "CONSENT_WITHDRAWN", ""),
    ("6;Paul Morel;0611000006;Dijon;registry listing", "OPTOUT_LISTED", ""),
    ('7;"Durand, Luc";0611000007;"Saint-Denis\r\nbâtiment B";refused, under contract',
     "RECENT_REFUSAL", "2027-07-20T10:00:00+02:00"),
    ("8;Zoé Faure;0611000008;Brest;refused: consent withdrawn too", "RECENT_REFUSAL", ""),
    ("9;Yves Blanc;0611000009;Tours;four calls in 30 days", "FREQUENCY_CAP",
     "2027-06-02T11:00:00+02:00"),
    ("10;Rose Lacroix;0690 00 00 01;Pointe-à-Pitre;holiday in Guadeloupe", "HOLIDAY",
     "2027-05-31T10:00:00-04:00"),
    ("11;Noé Joseph;0696000001;Fort-de-France;09:30 in Martinique", "OUTSIDE_HOURS",
     "2027-05-27T10:00:00-04:00"),
    ("12;Inès Garnier;0611000010;Caen;contract", "CONTRACT", ""),
    ("13;Urgence;112;-;emergency number", "EMERGENCY", ""),
    ("14;Service;0899123456;-;special rate", "OUT_OF_SCOPE", ""),
    ("15;Typo;12ab;-;not a number", "INVALID_NUMBER", ""),
    ("16;Vide;;-;empty cell", "INVALID_NUMBER", ""),
    ("17;Short row", "INVALID_NUMBER", ""),
    ("18;Eve Colin;0611000012;Rouen;dnc add", "INTERNAL_DNC", ""),
    ("19;Max Henry;0611000013;Laval;dnc add while Redis was down", "INTERNAL_DNC", ""),
    ("20;Lou Perrin;0611000014;Agen;energy contract", "NO_CONSENT", ""),
    ("21;Ana Lopez;06\u00a011\u00a000\u00a000\u00a011;Albi;consent, last line", "CONSENT", ""),
]  # fmt: skip
ALLOWED = {"CONSENT", "CONTRACT", "EMERGENCY", "OUT_OF_SCOPE"}


def lead_file() -> bytes:
    """The fixture: a byte-order mark, CRLF, one blank line, the last row without a break."""
    lines = [HEADER.encode()]
    for i, (row, _, _) in enumerate(ROWS):
        lines.append(row.encode() + (b"\r\n" if i < len(ROWS) - 1 else b""))
        if i == 2:
            lines.append(b"\r\n")
    return b"".join(lines)


CONSENTED = ("0611000001", "0611000005", "0611000008", "0611000009", "0690000001", "0696000001",
             "0611000011")  # fmt: skip


def admin_store(url: str) -> Store:
    return Store.from_url(url, "dialguard:", 2000)


@dataclass
class Site:
    cli: Cli
    leads: Path
    url: str


def set_up(tmp_path: Path, url: str, admin_url: str | None = None) -> Site:
    cli = Cli(tmp_path, url)
    data = make_config(cli.audit_dir)
    data["campaigns"][ENERGY] = {
        "principal": "ACME", "purpose": "prospecting", "sector": "energy_renovation",
    }  # fmt: skip
    data["central"] = {"path": str(tmp_path / "central.sqlite3")}
    cli.config.write_text(toml_dumps(data), encoding="utf-8")
    imports = {
        "dnc.csv": "number,reason\n0611000002,asked by letter\n",
        "consent.csv": "number,principal,given_at,expires_at,proof_ref\n"
        + "".join(f"{n},ACME,2026-11-01,,crm:{n}\n" for n in CONSENTED)
        + "0611000004,ACME,2026-01-01,2026-06-01,crm:4\n"
        + "0611000006,ACME,2026-09-01,,crm:6\n",
        "contract.csv": "number,principal,contract_id,sector,start,end\n"
        "0611000007,ACME,K7,general,2026-01-01,\n"
        "0611000010,ACME,K10,general,2026-01-01,\n"
        "0611000014,ACME,K14,energy_renovation,2026-01-01,\n",
    }
    for name, content in imports.items():
        kind = name.removesuffix(".csv")
        assert cli("import", kind, cli.file(name, content)).code == 0
    bloctel = cli.file("bloctel.csv", "Telephone;Identifiant;Statut\n0611000006;B6;INSCRIT\n")
    assert cli("import", "bloctel", bloctel, "--checked-at", "2026-11-20").code == 0
    clear = cli.file("bloctel-may.csv", "Telephone;Identifiant;Statut\n0611000003;B3;OK\n")
    assert cli("import", "bloctel", clear, "--checked-at", "2026-05-20").code == 0
    assert cli("consent", "withdraw", "0611000005", "--principal", "ACME",
               "--at", "2026-11-15T10:00").code == 0  # fmt: skip
    assert cli("dnc", "add", "0611000012", "--reason", "asked during a call").code == 0
    # Journalled, not in Redis: a change waiting for Redis, which a scrub counts.
    down = cli(
        "dnc", "add", "0611000013", "--reason", "asked", env={"DIALGUARD_REDIS_URL": REDIS_DOWN}
    )
    assert down.code == 2, down
    for when in ("2027-05-03T11:00", "2027-05-05T11:00", "2027-05-10T11:00", "2027-05-20T11:00"):
        call = cli(
            "check", "0611000009", "--campaign", PROSPECT, "--at", when, "--record", "--json"
        )
        assert call.json()["result"] == "ALLOW", call

    async def refusals() -> None:
        store = admin_store(admin_url or url)
        try:
            refused = datetime(2027, 5, 20, 11, tzinfo=PARIS)
            for raw in ("0611000007", "0611000008"):
                await store.record_refusal(normalise(raw), "ACME", refused)
        finally:
            await store.close()

    asyncio.run(refusals())
    return Site(cli, cli.file("leads.csv", lead_file()), url)


@pytest.fixture
def site(clean_redis: RedisServer, tmp_path: Path) -> Site:
    return set_up(tmp_path, clean_redis.url)


def report_rows(path: Path) -> list[dict[str, str]]:
    text = path.read_bytes().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=";"))


def keyspace(url: str) -> dict[str, Any]:
    """Every key and, for the attempts, every member and score."""
    with redis.Redis.from_url(url) as client:
        found: dict[str, Any] = {}
        for key in client.scan_iter(count=1000):
            if key.startswith(b"dialguard:att:"):
                found[key.decode()] = client.zrange(key, 0, -1, withscores=True)
            else:
                found[key.decode()] = client.type(key)
        return found


def test_every_reason_with_its_callable_from(site: Site, tmp_path: Path) -> None:
    cli = site.cli
    before = keyspace(site.url)
    records_before = len(audit_records(cli.audit_dir))
    out, report = tmp_path / "callable.csv", tmp_path / "blocked.csv"
    done = cli("scrub", site.leads, "--campaign", PROSPECT, "--at", WHEN,
               "--out", out, "--report", report)  # fmt: skip
    assert done.code == 0, done
    assert done.err == ""  # no progress bar off a terminal
    # Blocked rows: the row as it was, then result, reason, number_e164, callable_from.
    blocked = report_rows(report)
    expected_blocked = [(row, reason, when) for row, reason, when in ROWS if reason not in ALLOWED]
    assert len(blocked) == len(expected_blocked)
    for got, (row, reason, when) in zip(blocked, expected_blocked, strict=True):
        assert got["result"] == "DENY", row
        assert got["reason"] == reason, row
        assert got["callable_from"] == when, row
        number = next(csv.reader([row], delimiter=";"))
        if reason != "INVALID_NUMBER":
            assert got["number_e164"] == "'" + normalise(number[2]).e164  # a spreadsheet's text
    by_id = {row["id"]: row for row in blocked}
    assert by_id["7"]["ville"] == "Saint-Denis\r\nbâtiment B"  # the quoted line break kept
    assert by_id["17"]["nom"] == "Short row" and by_id["17"]["ville"] == ""  # padded
    # Callable rows: the input's bytes, header first, in order, the last without its break.
    source = lead_file()
    kept = source[: len(HEADER.encode())] + b"".join(
        row.encode() + (b"\r\n" if i < len(ROWS) - 1 else b"")
        for i, (row, reason, _) in enumerate(ROWS)
        if reason in ALLOWED
    )
    assert out.read_bytes() == kept
    # The summary, by reason.
    lines = done.out.splitlines()
    assert lines[0].startswith(f"{site.leads}: 21 leads for campaign {PROSPECT} at")
    assert "5 callable, 16 blocked" in lines[0]
    assert any("RECENT_REFUSAL" in line and "2027-07-20 10:00" in line for line in lines)
    assert "1 changes waiting for Redis in the journal were counted" in done.out
    # Nothing counted, nothing written to Redis; one record in the journal.
    assert keyspace(site.url) == before
    records = audit_records(cli.audit_dir)
    assert len(records) == records_before + 1
    record = records[-1]
    assert record["kind"] == "scrub"
    assert record["file"] == "leads.csv"
    assert record["sha256"] == hashlib.sha256(source).hexdigest()
    assert record["campaign"] == PROSPECT and record["principal"] == "ACME"
    assert record["at"] == "2027-05-27T15:30:00+02:00"
    assert (record["leads"], record["callable"], record["blocked"]) == (21, 5, 16)
    assert record["by_reason"]["INVALID_NUMBER"] == 3
    assert record["by_reason"]["RECENT_REFUSAL"] == 2
    assert sum(record["by_reason"].values()) == 21
    assert record["policy"]["version"] == "2026-08-11"
    assert record["column"] == "téléphone" and record["pending"] == 1
    assert record["operator"] and record["out"] == "callable.csv"
    # The journal takes it like any other record: verify, search, ship.
    assert cli("audit", "verify").code == 0
    found = cli("audit", "search", "--kind", "scrub")
    assert found.code == 0 and "SCRUB" in found.out and "5 of 21 leads callable" in found.out
    assert cli("audit", "ship").code == 0
    assert cli("audit", "verify", "--central").code == 0


def test_the_same_file_for_another_campaign_and_another_regime(site: Site, tmp_path: Path) -> None:
    cli = site.cli
    energy = cli("scrub", site.leads, "--campaign", ENERGY, "--at", WHEN, "--json")
    assert energy.code == 0, energy
    reasons = {row["reason"]: row["leads"] for row in energy.json()["by_reason"]}
    assert reasons["CONTRACT"] == 1  # the energy contract; the general ones do not count
    assert reasons["SECTOR_BAN"] >= 1
    optout = cli("scrub", site.leads, "--campaign", PROSPECT, "--at", WHEN_OPTOUT,
                 "--report", tmp_path / "optout.csv")  # fmt: skip
    assert optout.code == 0, optout
    rows = {row["id"]: row["reason"] for row in report_rows(tmp_path / "optout.csv")}
    assert rows["1"] == "OPTOUT_UNVERIFIED"  # never checked against the registry then
    assert "3" not in rows  # checked clear on 2026-05-20: OPTOUT_CLEAR, callable
    summary = optout.out
    assert "OPTOUT_CLEAR" in summary


def test_numbers_without_their_leading_0_with_number_form_nsn(site: Site, tmp_path: Path) -> None:
    # As VICIdial's vicidial_list keeps them (phone_number "612345678"); other spellings
    # in the same file are read as ever.
    rows = [
        ("a", "611000001", "CONSENT"),
        ("b", "611000002", "INTERNAL_DNC"),
        ("c", "0611000005", "CONSENT_WITHDRAWN"),
        ("d", "690000001", "HOLIDAY"),  # Guadeloupe's plan: 0690...
        ("e", "061100000", "INVALID_NUMBER"),  # nine digits, but a 0 first: no NSN
        ("f", "61100000", "INVALID_NUMBER"),
    ]
    leads = tmp_path / "vicidial.csv"
    leads.write_text(
        "lead_id,phone_number\n" + "".join(f"{i},{n}\n" for i, n, _ in rows), encoding="utf-8"
    )
    report = tmp_path / "report.csv"

    def reasons(*options: str) -> dict[str, str]:
        done = site.cli("scrub", leads, "--campaign", PROSPECT, "--at", WHEN,
                        "--report", report, "--json", *options)  # fmt: skip
        assert done.code == 0, done
        text = report.read_text(encoding="utf-8-sig")
        blocked = {r["lead_id"]: r["reason"] for r in csv.DictReader(io.StringIO(text))}
        return {i: blocked.get(i, "CONSENT") for i, _, _ in rows}

    assert reasons("--number-form", "nsn") == {i: reason for i, _, reason in rows}
    as_written = reasons()
    assert as_written["a"] == as_written["b"] == as_written["d"] == "INVALID_NUMBER"
    assert as_written["c"] == "CONSENT_WITHDRAWN"
    assert audit_records(site.cli.audit_dir)[-2]["number_form"] == "nsn"
    assert "number_form" not in audit_records(site.cli.audit_dir)[-1]
    bad = site.cli("scrub", leads, "--campaign", PROSPECT, "--number-form", "short")
    assert bad.code != 0 and "number-form" in bad.err and "Traceback" not in bad.err


def test_each_lead_is_decided_as_check_decides_it(site: Site) -> None:
    cli = site.cli
    scrubbed = site.cli.tmp / "all.csv"
    assert (
        cli("scrub", site.leads, "--campaign", PROSPECT, "--at", WHEN, "--report", scrubbed).code
        == 0
    )
    blocked = {row["id"]: row["reason"] for row in report_rows(scrubbed)}
    for i, (row, reason, _) in enumerate(ROWS, start=1):
        cells = next(csv.reader([row], delimiter=";"))
        if len(cells) < 3 or not cells[2] or reason == "INVALID_NUMBER":
            continue
        if i == 19:
            continue  # a change waiting for Redis: `check` alone does not read the journal
        checked = cli("check", cells[2], "--campaign", PROSPECT, "--at", WHEN, "--json")
        assert checked.json()["reason"] == blocked.get(str(i), reason), row


def test_a_scrub_counts_no_attempt(site: Site) -> None:
    """What a call would count, a scrub does not: the capped number stays at 4."""
    cli = site.cli
    for _ in range(2):
        assert cli("scrub", site.leads, "--campaign", PROSPECT, "--at", WHEN).code == 0
    checked = cli("check", "0611000009", "--campaign", PROSPECT, "--at", WHEN, "--json")
    assert checked.json()["attempts_30d"] == 4


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b"", (), "leads.csv: the file is empty: a CSV file with a header row is required"),
        ("phone\n0612345678\n".encode("utf-16"), (), "leads.csv: line 1: not a CSV file"),
        (b"name;city\nA;Paris\n", (), "leads.csv: line 1: no number column among 'name', 'city'"),
        (b"phone;mobile\n", (), "leads.csv: line 1: several number columns"),
        (b"name;phone\n", ("--column", "gsm"), "leads.csv: line 1: no column 'gsm'"),
        (b'phone\n0612345678\n"0612345679\n0612345670\n', (),
         "leads.csv: line 3: a quoted field opened there is never closed"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_in_one_line_and_nothing_is_written(
    site: Site, tmp_path: Path, content: bytes, args: tuple[str, ...], message: str
) -> None:
    cli = site.cli
    records = len(audit_records(cli.audit_dir))
    leads = cli.file("leads.csv", content)
    out, report = tmp_path / "out.csv", tmp_path / "report.csv"
    done = cli("scrub", leads, "--campaign", PROSPECT, "--out", out, "--report", report, *args)
    assert done.code == 1, done
    assert done.err.startswith(f"dialguard: {tmp_path / message}"), done.err
    assert len(done.err.splitlines()) == 1
    assert not out.exists() and not report.exists()
    assert not list(tmp_path.glob("*.part"))
    assert len(audit_records(cli.audit_dir)) == records


def test_usage_errors(site: Site, tmp_path: Path) -> None:
    cli = site.cli
    cases = [
        (("scrub", tmp_path / "none.csv", "--campaign", PROSPECT), "none.csv: file not found"),
        (("scrub", tmp_path, "--campaign", PROSPECT), "is a directory"),
        (("scrub", site.leads, "--campaign", "nope"), "unknown campaign 'nope'"),
        (("scrub", site.leads, "--campaign", PROSPECT, "--at", "soon"), "--at 'soon' is not"),
        (("scrub", site.leads, "--campaign", PROSPECT, "--out", site.leads),
         "is the lead file itself"),
        (("scrub", site.leads, "--campaign", PROSPECT, "--out", tmp_path / "a.csv",
          "--report", tmp_path / "a.csv"), "--out and --report name the same file"),
        (("scrub", site.leads, "--campaign", PROSPECT, "--out", tmp_path / "no" / "a.csv"),
         "no such directory"),
    ]  # fmt: skip
    for args, message in cases:
        done = cli(*args)
        assert done.code == 1, done
        assert message in done.err and len(done.err.splitlines()) == 1, done.err


def test_redis_down_is_exit_2_and_nothing_written(site: Site, tmp_path: Path) -> None:
    cli = site.cli
    records = len(audit_records(cli.audit_dir))
    out = tmp_path / "out.csv"
    done = cli("scrub", site.leads, "--campaign", PROSPECT, "--out", out,
               env={"DIALGUARD_REDIS_URL": REDIS_DOWN})  # fmt: skip
    assert done.code == 2, done
    assert done.err.startswith("dialguard: Redis unavailable") and len(done.err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    assert len(audit_records(cli.audit_dir)) == records
    # A file that is no lead file is said so first: the fix is the file's.
    bad = cli.file("bad.csv", b"name,city\n")
    refused = cli("scrub", bad, "--campaign", PROSPECT, env={"DIALGUARD_REDIS_URL": REDIS_DOWN})
    assert refused.code == 1 and "no number column" in refused.err


def test_an_unwritable_journal_is_exit_2_before_any_work(site: Site, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    text = site.cli.config.read_text(encoding="utf-8")
    site.cli.config.write_text(
        text.replace(str(site.cli.audit_dir), str(blocker / "audit")), encoding="utf-8"
    )
    done = site.cli("scrub", site.leads, "--campaign", PROSPECT, "--out", tmp_path / "o.csv")
    assert done.code == 2, done
    assert len(done.err.splitlines()) == 1 and not (tmp_path / "o.csv").exists()


def test_as_the_command_lines_acl_user(tmp_path: Path) -> None:
    """config/redis-acl.conf lets the CLI's user scrub (the server fails on a refusal)."""
    with running_redis(acl=True) as server:
        url = f"redis://dialguard-cli:{server.password}@127.0.0.1:{server.port}/0"
        site = set_up(tmp_path, url, server.admin_url)
        done = site.cli("scrub", site.leads, "--campaign", PROSPECT, "--at", WHEN, "--json")
        assert done.code == 0, done
        reasons = {row["reason"]: row for row in done.json()["by_reason"]}
        assert reasons["FREQUENCY_CAP"]["callable_from_first"] == "2027-06-02T11:00:00+02:00"


# --- the quick path: the judge decides as policy.decide does --------------------------

SPELLINGS = [
    "0612345678", "06 12 34 56 78", "+33612345678", "0033612345678", "06.12.34.56.78",
    "0262123456", "0692 07 37 82", "+590690123456", "0596123456", "0147000000",
    "0899123456", "+4915112345678", "+33 (0)6 12 34 56 78", "3949", "112", "12ab", "",
    "06\u00a012\u00a034\u00a056\u00a078", " 0612345678 ",
]  # fmt: skip
START = datetime(2026, 7, 20, tzinfo=PARIS)
nows = st.builds(
    lambda day, minute: START + timedelta(days=day, minutes=minute),
    st.integers(0, 200),
    st.integers(0, 24 * 60 - 1),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    nows,
    campaigns,
    policies(),
    st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=8),
)
def test_the_judge_decides_every_lead_as_decide(
    data: st.DataObject, now: datetime, campaign: Campaign, policy: Any, cells: list[str]
) -> None:
    # One judge for all the leads, as for a file: what one leaves behind decides no other.
    judge = Judge(campaign, policy, now)
    lead_campaign = scrub_campaign(campaign)
    for cell in cells:
        known: Facts = data.draw(facts(now))
        attempts = [
            int((now - timedelta(minutes=m)).timestamp() * 1000)
            for m in data.draw(st.lists(st.integers(1, 40 * 24 * 60), max_size=6))
        ]
        found = judge.number(cell)
        try:
            number, error = normalise(cell.strip()), ""
        except InvalidNumber as exc:
            number, error = None, str(exc)
        if isinstance(found, Verdict):
            decision = rules.decide(lead_campaign, number, Facts(), now, policy, error)
            assert (found.result, found.reason) == (decision.result, decision.reason)
            continue
        key, kind, window = found
        assert number is not None and key == number.key
        known = facts_at(known, attempts, now, policy, number)
        verdict = judge.decide(kind, known, attempts)
        decision = rules.decide(lead_campaign, number, known, now, policy)
        assert (verdict.result, verdict.reason) == (decision.result, decision.reason), cell
        when = lawful.callable_from(lead_campaign, number, known, now, policy, attempts)
        assert verdict.callable_from == (when if not decision.allowed else None)
        zone = ZoneInfo(number.timezones[0])
        assert window == policy.at(now.astimezone(zone).date()).window_days


def test_the_files_loop_reads_each_number_as_normalise() -> None:
    """The loop's quick path for "0612345678" (what the first number of its six first
    characters gave) and the judge's own reading give what normalise gives."""
    now = datetime(2026, 12, 7, 10, 30, tzinfo=PARIS)
    judge = Judge(Campaign("c", "ACME", Purpose.PROSPECTING, Sector.GENERAL), SHIPPED, now)
    cells = [*SPELLINGS, "0612345679", "0699999999", "0692000000", "0590999999", "0012345678",
             "0612 34567", "٠٦١٢٣٤٥٦٧٨", "06123456789", "06.12 34.56 78", "0 6 1 2 3 4 5 6 7 8",
             "00 33 6 12 34 56 78", "00.33.692.12.34.56", "0033 6 12 34 56 78", ". +33612345678",
             "+33 6 12 34 56 78", "+33612345678 ", "06" + " " * 40 + "12345678",
             "0033 (0)6 12 34 56 78", "06..12.34.56.78", "00612345678", "+330612345678",
             "0596 12 34 56", "0000000000", "0012345678 "] * 2  # fmt: skip
    rows = [(i, b"row", cell, "") for i, cell in enumerate(cells)]
    read = [lead for payload, _ in _batches(iter(rows), judge) for lead in payload]
    assert len(read) == len(cells)
    for cell, (_, key, kind, verdict) in zip(cells, read, strict=True):
        try:
            number = normalise(cell.strip())
        except InvalidNumber:
            assert verdict is not None and verdict.reason == "INVALID_NUMBER", cell
            continue
        if number.never_blocked:
            assert verdict is not None and verdict.reason == "EMERGENCY", cell
            continue
        assert kind is not None and key == number.key, cell
        assert (kind.kind, kind.territory, kind.timezones) == (
            number.kind, number.territory, number.timezones,
        ), cell  # fmt: skip


def test_a_lead_is_judged_without_the_caller_id_rule() -> None:
    config = load_config(ROOT / "config" / "dialguard.toml", env={})
    dialer = config.campaigns["demo-dialer"]  # automated, with caller IDs
    now = datetime(2026, 12, 7, 10, 30, tzinfo=PARIS)
    judge = Judge(dialer, config.policy, now)
    found = judge.number("0612345678")
    assert not isinstance(found, Verdict)
    assert judge.decide(found[1], Facts()).reason == "NO_CONSENT"  # not CALLER_ID_MISSING


def test_leads_at_the_cap_across_many_batches_keep_the_files_order(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    # Leads at the 30-day cap wait for one more read (their attempts' instants) while the
    # batches after them are decided: the outputs must still come out in the file's order,
    # each capped lead with the instant its own oldest attempt frees a slot.
    cli = Cli(tmp_path, clean_redis.url)
    cli.config.write_text(toml_dumps(make_config(cli.audit_dir)), encoding="utf-8")
    numbers = [f"0612{i:06d}" for i in range(1500)]  # six batches of the scan and more
    consents = "".join(f"{n},ACME,2026-11-01,,crm:{n}\n" for n in numbers)
    header = "number,principal,given_at,expires_at,proof_ref\n"
    assert cli("import", "consent", cli.file("consent.csv", header + consents)).code == 0
    capped = {n: i % 3 for i, n in enumerate(numbers) if i % 7 == 3}

    async def attempts() -> None:
        store = admin_store(clean_redis.url)
        try:
            for n, late in capped.items():
                days = (3 + late, 10, 15, 20)  # May 2027: the oldest frees the first slot
                for j, day in enumerate(days):
                    when = datetime(2027, 5, day, 11, tzinfo=PARIS)
                    await store.count_attempt(normalise(n), "ACME", when, 100, 30, f"a{n}{j}")
        finally:
            await store.close()

    asyncio.run(attempts())
    leads = cli.file(
        "leads.csv", "id,phone\n" + "".join(f"{i},{n}\n" for i, n in enumerate(numbers))
    )
    out, report = tmp_path / "callable.csv", tmp_path / "blocked.csv"
    done = cli("scrub", leads, "--campaign", PROSPECT, "--at", WHEN, "--out", out,
               "--report", report)  # fmt: skip
    assert done.code == 0, done

    expected_callable = [f"{i},{n}" for i, n in enumerate(numbers) if n not in capped]
    assert out.read_text().splitlines() == ["id,phone", *expected_callable]
    blocked = list(csv.DictReader(io.StringIO(report.read_bytes().decode("utf-8-sig"))))
    assert [row["phone"] for row in blocked] == list(capped)
    for row in blocked:
        assert row["reason"] == "FREQUENCY_CAP", row
        assert row["callable_from"] == f"2027-06-0{2 + capped[row['phone']]}T11:00:00+02:00", row
