"""Consents and contracts added live (`consent add`, `contract add|end`, and the Service
methods the HTTP API calls): journalled first, effective for the very next call, pending
while Redis is away, and the later word kept whatever order they are applied in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from dialguard.audit import Journal
from dialguard.changes import Change, ChangeKind, InvalidChange, change_in, change_of
from dialguard.import_files import ConsentRow, ContractRow
from dialguard.model import CallRequest, Contract, Facts, Reason, Sector
from dialguard.service import Service
from dialguard.store import Store
from dialguard.store.facts import merge_contracts
from dialguard.store.keys import Keys
from dialguard.store.loading import load
from tests.agi.test_server import MONDAY, NUMBER, NUMBER_RAW, Agi, admin_url, agi_server
from tests.cli_runner import Result, run_dialguard
from tests.journal import audit_records
from tests.redis_server import RedisServer, free_port, running_redis
from tests.test_cli import make_config as cli_config
from tests.test_cli import toml_dumps
from tests.test_service import make_config
from tests.waiting import wait_until

KEYS = Keys("dialguard:")
GIVEN = "2026-11-01T10:00"  # before MONDAY, the harness's clock


class Cli:
    """`dialguard` as an operator runs it beside a running service: same Redis, same
    journal (in a thread: the command runs its own event loop)."""

    def __init__(self, tmp: Path, redis_url: str, audit_dir: Path) -> None:
        self.config = tmp / "cli.toml"
        self.config.write_text(toml_dumps(cli_config(audit_dir)), encoding="utf-8")
        self.env = {"DIALGUARD_CONFIG": str(self.config), "DIALGUARD_REDIS_URL": redis_url}

    async def __call__(self, *args: str) -> Result:
        return await asyncio.to_thread(run_dialguard, args, self.env)


def ok(result: Result) -> str:
    assert result.code == 0 and result.err == "", result
    return result.out


def one_line_error(result: Result, code: int, needle: str) -> None:
    assert result.code == code, result
    assert "Traceback" not in result.err
    (line,) = result.err.splitlines()
    assert line.startswith("dialguard: ") and needle in line, result


async def reason_of(agi: Agi, campaign: str = "demo-prospecting") -> str:
    result = await agi.call(NUMBER_RAW, campaign)
    return result.variables["DIALGUARD_REASON"]


@pytest.fixture
async def agi_and_cli(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[Agi, Cli]]:
    audit = tmp_path / "audit"
    async with agi_server(clean_redis.url, audit) as agi:
        yield agi, Cli(tmp_path, admin_url(clean_redis.url), audit)


# --- through the CLI, seen by the next FastAGI call ------------------------------------------


async def test_a_consent_added_allows_the_next_call_and_a_withdrawal_denies_it(
    agi_and_cli: tuple[Agi, Cli],
) -> None:
    agi, cli = agi_and_cli
    assert await reason_of(agi) == "NO_CONSENT"
    out = ok(
        await cli(
            "consent", "add", "06 12 34 56 78", "--principal", "ACME", "--proof-ref", "form:981",
            "--given-at", GIVEN, "--source", "web form",
        )
    )  # fmt: skip
    assert out.startswith("consent of +33612345678 to ACME recorded (audit id ")
    result = await agi.call(NUMBER_RAW, "demo-prospecting")
    assert result.variables["DIALGUARD_REASON"] == "CONSENT"
    record = agi.record(result.variables["DIALGUARD_ID"])
    assert record["evidence"]["consent"]["proof_ref"] == "form:981"
    assert record["evidence"]["consent"]["given_at"].startswith("2026-11-01T09:00:00")
    (added,) = [r for r in agi.records() if r["kind"] == "consent-add"]
    assert added["given_at"] == "2026-11-01T09:00:00.000+00:00" and added["expires_at"] is None
    assert (added["proof_ref"], added["source"], added["adapter"]) == (
        "form:981",
        "web form",
        "cli",
    )
    assert added["operator"] and added["principal"] == "ACME"

    ok(await cli("consent", "withdraw", NUMBER_RAW, "--principal", "ACME", "--at", "2026-11-20"))
    assert await reason_of(agi) == "CONSENT_WITHDRAWN"
    # Given again after the withdrawal: callable again.
    again = ["--given-at", "2026-11-25T09:00", "--expires-at", "2027-11-25"]
    ok(
        await cli(
            "consent", "add", NUMBER_RAW, "--principal", "ACME", "--proof-ref", "call:7", *again
        )
    )
    assert await reason_of(agi) == "CONSENT"
    # Another principal's consent is not ACME's.
    other = ["--principal", "OTHER", "--proof-ref", "x", "--given-at", GIVEN]
    ok(await cli("consent", "add", "0611111111", *other))
    assert (await agi.call("0611111111", "demo-prospecting")).variables[
        "DIALGUARD_REASON"
    ] == "NO_CONSENT"


async def test_a_contract_added_opens_the_exception_and_its_end_closes_it(
    agi_and_cli: tuple[Agi, Cli],
) -> None:
    agi, cli = agi_and_cli
    assert await reason_of(agi, "demo-energy") == "SECTOR_BAN"
    contract = ["--principal", "ACME", "--id", "CT-1", "--sector", "energy_renovation"]
    out = ok(await cli("contract", "add", NUMBER_RAW, *contract, "--start", "2026-01-01"))
    assert out.startswith("contract CT-1 of +33612345678 with ACME recorded (audit id ")
    result = await agi.call(NUMBER_RAW, "demo-energy")
    assert (result.variables["DIALGUARD_RESULT"], result.variables["DIALGUARD_REASON"]) == (
        "ALLOW",
        "CONTRACT",
    )
    record = agi.record(result.variables["DIALGUARD_ID"])
    assert record["evidence"]["contracts"][0]["id"] == "CT-1"
    # Its last day: the day before the harness's Monday.
    ended = ok(await cli("contract", "end", NUMBER_RAW, "--principal", "ACME", "--id", "CT-1",
                         "--at", "2026-11-29"))  # fmt: skip
    assert "ended (audit id " in ended
    assert await reason_of(agi, "demo-energy") == "SECTOR_BAN"
    kinds = [(r["kind"], r.get("end")) for r in agi.records() if r["kind"].startswith("contract")]
    assert kinds == [("contract-add", None), ("contract-end", "2026-11-29")]


async def test_a_contract_ended_now_no_longer_counts_today(agi_and_cli: tuple[Agi, Cli]) -> None:
    agi, _ = agi_and_cli
    # The Service methods the HTTP API calls, at the harness's instant (Monday 11:00).
    start = date(2026, 1, 1)
    _, _, applied = await agi.service.add_contract(
        NUMBER_RAW, "ACME", "CT-2", Sector.ENERGY_RENOVATION, start=start, adapter="http"
    )
    assert applied and await reason_of(agi, "demo-energy") == "CONTRACT"
    _, _, applied = await agi.service.end_contract(NUMBER_RAW, "ACME", "CT-2", adapter="http")
    assert applied and await reason_of(agi, "demo-energy") == "SECTOR_BAN"
    (end,) = [r for r in agi.records() if r["kind"] == "contract-end"]
    assert (end["end"], end["adapter"]) == ("2026-11-29", "http")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--principal", "AC ME", "--proof-ref", "p"], "principal 'AC ME' must be 1-64"),
        (["--principal", "ACME", "--proof-ref", ""], "proof_ref is required"),
        (["--principal", "ACME", "--proof-ref", "a\nb"], "printable characters"),
        (["--principal", "ACME", "--proof-ref", "a\rb"], "printable characters"),
        (["--principal", "ACME", "--proof-ref", "a|b"], "without '|'"),
        (["--principal", "ACME", "--proof-ref", "x" * 201], "at most 200"),
        (["--principal", "ACME", "--proof-ref", "p", "--source", "s" * 65], "at most 64"),
        (["--principal", "ACME", "--proof-ref", "p", "--given-at", "soon"], "ISO 8601"),
        (["--principal", "ACME", "--proof-ref", "p", "--given-at", "2099-01-01"], "future"),
        (
            ["--principal", "ACME", "--proof-ref", "p", "--given-at", GIVEN, "--expires-at", GIVEN],
            "expires_at must come after given_at",
        ),
        (["--principal", "ACME", "--proof-ref", "p", "--expires-at", "2300-01-01"], "years"),
    ],
)
async def test_a_bad_consent_is_one_line_and_writes_nothing(
    agi_and_cli: tuple[Agi, Cli], args: list[str], needle: str
) -> None:
    agi, cli = agi_and_cli
    one_line_error(await cli("consent", "add", NUMBER_RAW, *args), 1, needle)
    one_line_error(
        await cli("consent", "add", "12", "--principal", "ACME", "--proof-ref", "p"), 1, "12"
    )
    assert agi.records() == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["add", "--id", "C", "--sector", "gas"], "'gas' is not one of"),
        (["add", "--id", "", "--sector", "cpf"], "contract id is required"),
        (["add", "--id", "C\n", "--sector", "cpf"], "printable"),
        (["add", "--id", "C", "--sector", "cpf", "--start", "01/02/2026"], "not a date"),
        (
            ["add", "--id", "C", "--sector", "cpf", "--start", "2026-02-01", "--end", "2026-01-01"],
            "end must not come before start",
        ),
        (["end", "--id", "C", "--at", "2026-13-01"], "not a date"),
        (["end", "--id", "C", "--at", "2099-01-01T10:00"], "future"),
    ],
)
async def test_a_bad_contract_change_is_one_line_and_writes_nothing(
    agi_and_cli: tuple[Agi, Cli], args: list[str], needle: str
) -> None:
    agi, cli = agi_and_cli
    verb, *rest = args
    one_line_error(await cli("contract", verb, NUMBER_RAW, "--principal", "ACME", *rest), 1, needle)
    assert agi.records() == []


# --- Redis away: journalled, pending, applied once it answers -------------------------------


async def test_changes_taken_while_redis_is_down_are_applied_when_it_returns(
    tmp_path: Path,
) -> None:
    port = free_port()
    audit = tmp_path / "audit"
    config = make_config(f"redis://127.0.0.1:{port}/0", audit)
    store = Store.from_url(config.redis.url, config.redis.prefix, 300)
    service = Service(config, store, Journal(audit), clock=lambda: MONDAY)
    await service.start()
    try:
        given = MONDAY - timedelta(days=10)
        _, consent_id, applied = await service.add_consent(
            NUMBER_RAW, "ACME", "form:1", given_at=given, source="crm"
        )
        assert not applied
        start = date(2026, 1, 1)
        _, contract_id, applied = await service.add_contract(
            "0622222222", "ACME", "CT-9", Sector.ENERGY_RENOVATION, start=start
        )
        assert not applied
        assert len(service.pending) == 2
        # A consent or a contract waiting lets no call through meanwhile.
        gap = await service.decide(CallRequest(NUMBER_RAW, "demo-prospecting"), now=MONDAY)
        assert gap.decision.reason is Reason.STORE_UNAVAILABLE
        with running_redis(port):
            await wait_until(lambda: not len(service.pending), 5)
            prospect = CallRequest(NUMBER_RAW, "demo-prospecting")
            assert (await service.decide(prospect, now=MONDAY)).decision.reason is Reason.CONSENT
            energy = CallRequest("0622222222", "demo-energy")
            assert (await service.decide(energy, now=MONDAY)).decision.reason is Reason.CONTRACT
            client = aioredis.Redis(port=port, decode_responses=True)
            marks = await client.zrange(KEYS.applied, 0, -1)
            await client.aclose()
            assert sorted(marks) == sorted([consent_id, contract_id])
    finally:
        await service.aclose()
        await store.close()


def test_the_cli_says_a_consent_waits_and_apply_pending_applies_it(
    tmp_path: Path, clean_redis: RedisServer
) -> None:
    audit = tmp_path / "audit"
    config = tmp_path / "cli.toml"
    config.write_text(toml_dumps(cli_config(audit)), encoding="utf-8")
    env = {"DIALGUARD_CONFIG": str(config), "DIALGUARD_REDIS_URL": "redis://127.0.0.1:1/0"}
    add = ["consent", "add", NUMBER_RAW, "--principal", "ACME", "--proof-ref", "p", "--given-at"]
    result = run_dialguard([*add, GIVEN], env)
    one_line_error(result, 2, "kept in the audit journal as ")
    (record,) = audit_records(audit)
    assert record["kind"] == "consent-add"
    listed = run_dialguard(["audit", "pending", "--json"], env)
    assert listed.code == 2  # Redis is needed to say what it has taken
    env["DIALGUARD_REDIS_URL"] = clean_redis.url
    (waiting,) = [
        json.loads(line)
        for line in run_dialguard(["audit", "pending", "--json"], env).out.splitlines()
    ]
    assert (waiting["kind"], waiting["detail"]) == ("consent-add", "consent p")
    assert run_dialguard(["audit", "apply-pending"], env).out == "1 change applied\n"
    check = ["check", NUMBER_RAW, "--campaign", "t-prospect", "--at", "2026-12-01T10:30", "--json"]
    assert json.loads(run_dialguard(check, env).out)["reason"] == "CONSENT"


# --- the later word, whatever order changes are applied in -----------------------------------

MS = int(MONDAY.timestamp() * 1000)
DAY = 86_400_000


def consent_change(change_id: str, given_days: int, proof: str, expires_days: int = 0) -> Change:
    return Change(
        change_id,
        MS,
        ChangeKind.CONSENT_ADD,
        NUMBER.key,
        "ACME",
        given_ms=MS + given_days * DAY,
        expires_ms=MS + expires_days * DAY if expires_days else 0,
        proof_ref=proof,
    )


def withdrawal(change_id: str, days: int) -> Change:
    return Change(change_id, MS + days * DAY, ChangeKind.CONSENT_WITHDRAW, NUMBER.key, "ACME")


def contract_change(change_id: str, at_days: int, kind: ChangeKind, end: str = "") -> Change:
    return Change(
        change_id,
        MS + at_days * DAY,
        kind,
        NUMBER.key,
        "ACME",
        contract_id="CT-1",
        sector="energy_renovation" if kind is ChangeKind.CONTRACT_ADD else "",
        start="2026-01-01" if kind is ChangeKind.CONTRACT_ADD else "",
        end=end,
    )


ADD_OLD = consent_change("c1", -40, "old")
ADD_NEW = consent_change("c2", -20, "new")
LAPSED = consent_change("c3", -400, "lapsed", -10)
WITHDRAWN = withdrawal("w1", -30)
WITHDRAWN_LATE = withdrawal("w2", -10)
SIGNED = contract_change("k1", -5, ChangeKind.CONTRACT_ADD)
ENDED = contract_change("k2", -3, ChangeKind.CONTRACT_END, end="2026-11-20")
SIGNED_AGAIN = contract_change("k3", -1, ChangeKind.CONTRACT_ADD, end="2027-06-30")


@pytest.mark.parametrize(
    ("changes", "campaign", "expected"),
    [
        ([ADD_OLD], "demo-prospecting", ("CONSENT", "old")),
        ([ADD_OLD, ADD_NEW], "demo-prospecting", ("CONSENT", "new")),
        ([ADD_NEW, ADD_OLD], "demo-prospecting", ("CONSENT", "new")),  # late: never back
        ([ADD_OLD, WITHDRAWN], "demo-prospecting", ("CONSENT_WITHDRAWN", "old")),
        ([WITHDRAWN, ADD_OLD], "demo-prospecting", ("CONSENT_WITHDRAWN", "old")),
        ([ADD_OLD, WITHDRAWN, ADD_NEW], "demo-prospecting", ("CONSENT", "new")),
        ([ADD_NEW, WITHDRAWN, ADD_OLD], "demo-prospecting", ("CONSENT", "new")),
        ([ADD_NEW, WITHDRAWN_LATE], "demo-prospecting", ("CONSENT_WITHDRAWN", "new")),
        (
            [consent_change("c3", -400, "lapsed", -10)],
            "demo-prospecting",
            ("CONSENT_EXPIRED", "lapsed"),
        ),
        ([SIGNED], "demo-energy", ("CONTRACT", "")),
        ([SIGNED, ENDED], "demo-energy", ("SECTOR_BAN", "")),
        ([ENDED, SIGNED], "demo-energy", ("SECTOR_BAN", "")),
        ([SIGNED, ENDED, SIGNED_AGAIN], "demo-energy", ("CONTRACT", "")),
        ([SIGNED_AGAIN, ENDED, SIGNED], "demo-energy", ("CONTRACT", "")),
        ([ENDED], "demo-energy", ("SECTOR_BAN", "")),
    ],
)
async def test_the_later_word_wins_in_any_order_and_twice_changes_nothing(
    redis_client: aioredis.Redis,
    clean_redis: RedisServer,
    tmp_path: Path,
    changes: list[Change],
    campaign: str,
    expected: tuple[str, str],
) -> None:
    config = make_config(clean_redis.url, tmp_path / "audit")
    store = Store.from_settings(config.redis)
    service = Service(config, store, None)
    try:
        for change in changes:
            await store.apply(change)
        before = await redis_client.hgetall(KEYS.consent_live)
        for change in changes:  # again: applied once, so nothing moves
            assert not await store.apply(change)
        assert await redis_client.hgetall(KEYS.consent_live) == before
        decision = (await service.decide(CallRequest(NUMBER_RAW, campaign), now=MONDAY)).decision
        consent = decision.facts.consent if decision.facts else None
        assert (decision.reason.value, consent.proof_ref if consent else "") == expected
    finally:
        await store.close()


async def test_a_live_consent_beats_an_older_imported_one_and_loses_to_a_newer(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    config = make_config(clean_redis.url, tmp_path / "audit")
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir), clock=lambda: MONDAY)
    try:
        imported = ConsentRow(NUMBER, "ACME", MONDAY - timedelta(days=20), None, "file:1")
        await load(store.lists, "consent", [imported], "replace")
        facts = await store.facts(NUMBER, "ACME", MONDAY, 30)
        assert facts.consent is not None and facts.consent.proof_ref == "file:1"
        await service.add_consent(NUMBER_RAW, "ACME", "live:old", given_at=MONDAY - timedelta(30))
        facts = await store.facts(NUMBER, "ACME", MONDAY, 30)
        assert facts.consent is not None and facts.consent.proof_ref == "file:1"
        await service.add_consent(NUMBER_RAW, "ACME", "live:new", given_at=MONDAY - timedelta(2))
        facts = await store.facts(NUMBER, "ACME", MONDAY, 30)
        assert facts.consent is not None and facts.consent.proof_ref == "live:new"
        # The nightly --replace keeps what was added live.
        await load(store.lists, "consent", [imported], "replace")
        facts = await store.facts(NUMBER, "ACME", MONDAY, 30)
        assert facts.consent is not None and facts.consent.proof_ref == "live:new"
    finally:
        await store.close()


async def test_a_live_end_shortens_an_imported_contract(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    config = make_config(clean_redis.url, tmp_path / "audit")
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir), clock=lambda: MONDAY)
    try:
        ongoing = Contract("CT-5", Sector.ENERGY_RENOVATION, date(2025, 1, 1), None)
        other = Contract("CT-6", Sector.CPF, date(2025, 1, 1), date(2027, 1, 1))
        rows = [ContractRow(NUMBER, "ACME", ongoing), ContractRow(NUMBER, "ACME", other)]
        await load(store.lists, "contract", rows, "replace")
        energy = CallRequest(NUMBER_RAW, "demo-energy")
        assert (await service.decide(energy)).decision.reason is Reason.CONTRACT
        await service.end_contract(NUMBER_RAW, "ACME", "CT-5", ended_at=date(2026, 6, 30))
        assert (await service.decide(energy)).decision.reason is Reason.SECTOR_BAN
        facts = await store.facts(NUMBER, "ACME", MONDAY, 30)
        assert facts.contracts == (replace(ongoing, end=date(2026, 6, 30)), other)
    finally:
        await store.close()


async def test_a_pending_contract_end_counts_at_once_a_pending_add_does_not(
    tmp_path: Path,
) -> None:
    config = make_config("redis://127.0.0.1:1/0", tmp_path / "audit")
    store = Store.from_url(config.redis.url, config.redis.prefix, 300)
    service = Service(config, store, Journal(config.audit_dir), clock=lambda: MONDAY)
    try:
        await service.end_contract(NUMBER_RAW, "ACME", "CT-1", ended_at=date(2026, 11, 1))
        await service.add_contract(NUMBER_RAW, "ACME", "CT-2", "energy_renovation")
        ongoing = Contract("CT-1", Sector.ENERGY_RENOVATION, date(2025, 1, 1), None)
        signed = Contract("CT-2", Sector.ENERGY_RENOVATION, date(2025, 1, 1), None)
        seen = service.pending.overlay(NUMBER.key, "ACME", Facts(contracts=(ongoing, signed)))
        assert seen.contracts == (replace(ongoing, end=date(2026, 11, 1)), signed)
        assert service.pending.overlay(NUMBER.key, "OTHER", Facts()) == Facts()
    finally:
        await store.close()


# --- the records -------------------------------------------------------------------------


def journal_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


BASE = {"id": "x1", "ts": MS, "node": "n", "number": "+33612345678", "principal": "ACME"}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"kind": "consent-add", "given_at": "2026-11-01T09:00:00.000+00:00",
             "expires_at": None, "proof_ref": "p", "source": "web"},
            {"given_ms": 1_793_523_600_000, "expires_ms": 0, "proof_ref": "p", "source": "web"},
        ),
        (
            {"kind": "consent-add", "given_at": "2026-11-01T09:00:00.123+00:00",
             "expires_at": "2027-11-01T09:00:00.000+00:00", "proof_ref": "p"},
            {"given_ms": 1_793_523_600_123, "expires_ms": 1_825_059_600_000},
        ),
        (
            {"kind": "contract-add", "contract_id": "C", "sector": "cpf", "start": "2026-01-01",
             "end": None},
            {"contract_id": "C", "sector": "cpf", "start": "2026-01-01", "end": ""},
        ),
        (
            {"kind": "contract-end", "contract_id": "C", "ended_at": "2026-11-30",
             "end": "2026-11-30"},
            {"contract_id": "C", "end": "2026-11-30"},
        ),
        ({"kind": "consent-add", "given_at": "2026-11-01T09:00:00", "proof_ref": "p"}, None),
        ({"kind": "consent-add", "given_at": "2026-11-01T09:00:00+00:00", "proof_ref": ""}, None),
        ({"kind": "consent-add", "given_at": "yesterday", "proof_ref": "p"}, None),
        (
            {"kind": "consent-add", "given_at": "2026-11-01T09:00:00+00:00",
             "expires_at": "2026-10-01T09:00:00+00:00", "proof_ref": "p"},
            None,
        ),
        ({"kind": "contract-add", "contract_id": "C", "sector": "gas", "start": "2026-06"}, None),
        ({"kind": "contract-add", "contract_id": "C", "sector": "gas", "start": "2026-01-01"},
         None),
        ({"kind": "contract-add", "contract_id": "", "sector": "cpf", "start": "2026-01-01"},
         None),
        ({"kind": "contract-end", "contract_id": "C", "end": ""}, None),
        ({"kind": "contract-end", "contract_id": "C", "end": "2026-11-30", "principal": "a b"},
         None),
    ],
)  # fmt: skip
def test_change_records_read_back_or_are_refused(
    record: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    full = {**BASE, **record}
    change = change_of(full)
    assert change_in(journal_line(full)) == change
    if expected is None:
        assert change is None
        return
    assert change is not None and change.kind.value == record["kind"]
    for name, value in expected.items():
        assert getattr(change, name) == value, name


async def test_the_service_refuses_what_the_cli_cannot_send(service_only: Service) -> None:
    with pytest.raises(InvalidChange, match="needs its UTC offset"):
        await service_only.add_consent(NUMBER_RAW, "ACME", "p", given_at=datetime(2026, 11, 1))
    with pytest.raises(InvalidChange, match="sector"):
        await service_only.add_contract(NUMBER_RAW, "ACME", "C", "gas")
    with pytest.raises(InvalidChange, match="principal"):
        await service_only.withdraw_consent(NUMBER_RAW, "")
    assert audit_records(service_only.config.audit_dir) == []


@pytest.fixture
async def service_only(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Service]:
    config = make_config(clean_redis.url, tmp_path / "audit")
    store = Store.from_settings(config.redis)
    yield Service(config, store, Journal(config.audit_dir), clock=lambda: MONDAY)
    await store.close()


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        ({}, ("A", None)),
        ({"A": ["cpf", "2026-01-01", "", "5", "", "0"]}, ("A", None)),
        ({"A": ["", "", "", "0", "2026-03-01", "5"]}, ("A", date(2026, 3, 1))),
        ({"A": ["cpf", "2026-01-01", "", "5", "2026-03-01", "4"]}, ("A", None)),
        ({"A": ["cpf", "2026-01-01", "2026-12-31", "5", "2027-03-01", "6"]},
         ("A", date(2026, 12, 31))),
        ({"B": ["", "", "", "0", "2026-03-01", "5"]}, ("A", None)),  # nothing to end: ignored
    ],
)  # fmt: skip
def test_merging_live_contracts_with_imported_ones(
    live: dict[str, list[str]], expected: tuple[str, date | None]
) -> None:
    imported = (Contract("A", Sector.CPF, date(2025, 1, 1), None),)
    merged = merge_contracts(imported, json.dumps(live)) if live else imported
    assert [(c.contract_id, c.end) for c in merged] == [expected]
