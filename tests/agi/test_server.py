"""End to end: the fake Asterisk 22.10.1 peer -> the real FastAgiServer -> a real Redis.

Every server runs in-process on 127.0.0.1, port 0, with a fixed clock (Monday 2026-11-30
11:00 Europe/Paris unless a test says otherwise), its audit journal in tmp_path, and the
test session's private redis-server (a dedicated one where a test freezes it). The last
tests run the real `dialguard serve --workers 2` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
import structlog

from dialguard.agi.server import FastAgiServer
from dialguard.audit import Journal
from dialguard.cli.common import configure_logging
from dialguard.config import Config, load_config
from dialguard.import_files import ConsentRow, DncRow
from dialguard.model import FailMode
from dialguard.numbers import normalise
from dialguard.service import Service
from dialguard.store import Store
from dialguard.store.loading import load
from dialguard.telemetry import Telemetry
from tests.agi.asterisk_peer import SessionResult, parse_args, run_session
from tests.journal import audit_records
from tests.redis_server import RedisServer, free_port, running_redis
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PARIS = ZoneInfo("Europe/Paris")
MONDAY = datetime(2026, 11, 30, 11, 0, tzinfo=PARIS)
NUMBER_RAW = "0612345678"
NUMBER = normalise(NUMBER_RAW)
CHECK_VARIABLES = ["DIALGUARD_RESULT", "DIALGUARD_REASON", "DIALGUARD_ID", "DIALGUARD_NUMBER"]
OUTCOME_VARIABLES = {"DIALGUARD_OUTCOME", "DIALGUARD_ID"}
SAFE_VALUE = re.compile(r"[A-Za-z0-9_+.-]*")
REDIS_DOWN = "redis://127.0.0.1:1/0"

Record = dict[str, Any]


# --- the harness ------------------------------------------------------------------------


def make_config(url: str, audit_dir: Path) -> Config:
    config = load_config(ROOT / "config" / "dialguard.toml", env={"DIALGUARD_REDIS_URL": url})
    return replace(config, audit_dir=audit_dir, node="test-node")


def admin_url(url: str) -> str:
    """`url` without its user: the test's own default user, for what an operator would do
    with the CLI (imports, direct writes) while the service runs as its ACL user."""
    return re.sub(r"//[^@/]*@", "//", url, count=1)


@dataclass
class Agi:
    """One running FastAgiServer and what a test needs around it."""

    server: FastAgiServer
    service: Service
    store: Store  # the service's
    port: int
    admin: Store  # the operator's: data a test sets up

    async def call(self, *args: str, script: str = "check", **options: Any) -> SessionResult:
        result: SessionResult = await run_session(
            HOST, self.port, script=script, args=args, **options
        )
        return result

    def records(self) -> list[Record]:
        return audit_records(self.service.config.audit_dir)

    def record(self, record_id: str) -> Record:
        (found,) = [r for r in self.records() if r["id"] == record_id]
        return found

    async def settled(self, timeout: float = 5.0) -> None:
        """Wait until no session is left (the server's own bookkeeping)."""
        await wait_until(lambda: not self.server.sessions, timeout)

    async def drained(self, timeout: float = 5.0) -> None:
        """Wait until every slot reserved for a call not placed was given back: releases
        (a denied call) and cancellations (a read the client gave up on)."""
        await wait_until(
            lambda: not self.service.background and not self.store.pending_cancels,
            timeout,
        )

    async def attempts(self, raw: str) -> int:
        facts = await self.store.facts(normalise(raw), "ACME", MONDAY, 30)
        return facts.attempts_30d


@asynccontextmanager
async def agi_server(
    url: str,
    audit_dir: Path,
    *,
    clock: datetime = MONDAY,
    deadline_ms: int = 5000,
    session_timeout_ms: int = 15000,
    redis_timeout_ms: int = 2000,
    campaign_from_accountcode: bool = False,
    configure: Callable[[Config], Config] = lambda config: config,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[Agi]:
    # Generous deadlines unless a test is about them: a loaded 2-core machine must not turn
    # a slow turn of the event loop into a DEADLINE answer.
    config = configure(make_config(url, audit_dir))
    settings = replace(
        config.server,
        port=0,
        deadline_ms=deadline_ms,
        session_timeout_ms=session_timeout_ms,
        campaign_from_accountcode=campaign_from_accountcode,
    )
    config = replace(config, server=settings)
    store = Store.from_settings(config.redis, redis_timeout_ms, telemetry)
    as_admin = replace(config.redis, url=admin_url(config.redis.url), username=None, password=None)
    admin = Store.from_settings(as_admin, redis_timeout_ms)
    journal = Journal(audit_dir, telemetry)
    service = Service(config, store, journal, clock=lambda: clock, telemetry=telemetry)
    server = FastAgiServer(service, settings)
    await server.start()
    try:
        assert server.port > 0
        yield Agi(server, service, store, server.port, admin)
    finally:
        await server.stop(grace_s=5)
        with contextlib.suppress(AssertionError):  # Redis may be down or frozen here
            await wait_until(lambda: not getattr(service, "_background", ()), 2)
        await store.close()
        await admin.close()


@pytest.fixture
async def agi(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Agi]:
    async with agi_server(clean_redis.url, tmp_path / "audit") as harness:
        yield harness


def assert_clean(result: SessionResult, names: Sequence[str] | set[str] = ()) -> None:
    """Nothing a real Asterisk would misread; only SET VARIABLE of our names, safe values."""
    assert result.dangerous == []
    assert not result.timed_out
    assert result.closed_by_server
    for command in result.commands:
        assert len(command) == 4 and command[:2] == ("SET", "VARIABLE"), command
        assert command[2] in (names or CHECK_VARIABLES), command
        assert SAFE_VALUE.fullmatch(command[3]), command


def assert_decision(
    agi: Agi, result: SessionResult, expected: str, reason: str, number: str = NUMBER.e164
) -> Record:
    """The four variables, in order, and the audit record that carries the same id."""
    assert_clean(result)
    assert [command[2] for command in result.commands] == CHECK_VARIABLES
    variables = result.variables
    assert variables["DIALGUARD_RESULT"] == expected, variables
    assert variables["DIALGUARD_REASON"] == reason, variables
    assert variables["DIALGUARD_NUMBER"] == number
    record = agi.record(variables["DIALGUARD_ID"])
    assert record["kind"] == "decision"
    assert (record["result"], record["reason"]) == (expected, reason)
    assert record["number"] == (number or None)
    assert record["adapter"] == "fastagi"
    assert record["uniqueid"] == result.uniqueid
    assert record["channel"].startswith("Local/")
    return record


def assert_closed_silently(result: SessionResult) -> None:
    """The server hung up without a word: the dialplan sees no result and fails closed."""
    assert result.closed_by_server and not result.timed_out
    assert result.variables == {} and result.commands == [] and result.received == b""
    assert result.dangerous == []


async def raw_exchange(port: int, data: bytes, *, eof: bool = False, timeout: float = 5) -> bytes:
    """Send raw bytes as a client; return what the server sent before it closed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    received = b""
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
            if eof:
                writer.write_eof()
        async with asyncio.timeout(timeout):  # the server must close: TimeoutError fails
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(4096):
                    received += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received


async def raw_agi(port: int, block: bytes, timeout: float = 5) -> list[tuple[bytes, ...]]:
    """A bare client: send `block` as is, answer each command line as SET VARIABLE is."""
    reader, writer = await asyncio.open_connection(HOST, port)
    commands: list[tuple[bytes, ...]] = []
    try:
        writer.write(block)
        await writer.drain()
        async with asyncio.timeout(timeout):  # the server must close: TimeoutError fails
            while line := await reader.readline():
                commands.append(tuple(parse_args(line.rstrip(b"\n"))))
                with contextlib.suppress(ConnectionError):
                    writer.write(b"200 result=1\n")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return commands


def raw_variables(commands: list[tuple[bytes, ...]]) -> dict[str, str]:
    assert all(len(c) == 4 and c[:2] == (b"SET", b"VARIABLE") for c in commands), commands
    assert [c[2].decode() for c in commands] == CHECK_VARIABLES
    return {c[2].decode(): c[3].decode() for c in commands}


async def load_consent(store: Store, given: datetime = MONDAY - timedelta(days=30)) -> None:
    row = ConsentRow(NUMBER, "ACME", given, None, "crm:42")
    await load(store.lists, "consent", [row], "add")


# --- decisions: every result the dialplan can see ----------------------------------------

Setup = Callable[[Store], Awaitable[None]]


async def nothing(store: Store) -> None:
    pass


async def on_dnc(store: Store) -> None:
    await store.dnc_add(NUMBER, "asked during a call", MONDAY - timedelta(days=3))


async def consent_given(store: Store) -> None:
    await load_consent(store)


async def consent_withdrawn(store: Store) -> None:
    await load_consent(store)
    await store.withdraw_consent(NUMBER, "ACME", MONDAY - timedelta(days=1))


@pytest.mark.parametrize(
    ("setup", "clock", "number", "campaign", "expected", "reason", "e164"),
    [
        (nothing, MONDAY, NUMBER_RAW, "demo-press", "ALLOW", "PRESS", NUMBER.e164),
        (consent_given, MONDAY, NUMBER_RAW, "demo-prospecting", "ALLOW", "CONSENT", NUMBER.e164),
        (nothing, MONDAY, "06 12 34 56 78", "demo-survey", "ALLOW", "NON_COMMERCIAL", NUMBER.e164),
        (nothing, MONDAY, "112", "demo-prospecting", "ALLOW", "EMERGENCY", "112"),
        (on_dnc, MONDAY, NUMBER_RAW, "demo-press", "DENY", "INTERNAL_DNC", NUMBER.e164),
        (nothing, MONDAY, NUMBER_RAW, "demo-prospecting", "DENY", "NO_CONSENT", NUMBER.e164),
        (
            consent_withdrawn,
            MONDAY,
            NUMBER_RAW,
            "demo-prospecting",
            "DENY",
            "CONSENT_WITHDRAWN",
            NUMBER.e164,
        ),
        (nothing, MONDAY, NUMBER_RAW, "demo-energy", "DENY", "SECTOR_BAN", NUMBER.e164),
        # Monday 13:30, the lunch gap; Sunday 11:00; Christmas (a Friday) 11:00.
        (
            nothing,
            MONDAY.replace(hour=13, minute=30),
            NUMBER_RAW,
            "demo-press",
            "DENY",
            "OUTSIDE_HOURS",
            NUMBER.e164,
        ),
        (
            nothing,
            MONDAY - timedelta(days=1),
            NUMBER_RAW,
            "demo-press",
            "DENY",
            "OUTSIDE_HOURS",
            NUMBER.e164,
        ),
        (
            nothing,
            datetime(2026, 12, 25, 11, 0, tzinfo=PARIS),
            NUMBER_RAW,
            "demo-press",
            "DENY",
            "HOLIDAY",
            NUMBER.e164,
        ),
        (nothing, MONDAY, "12", "demo-press", "DENY", "INVALID_NUMBER", ""),
        (nothing, MONDAY, "", "demo-press", "DENY", "INVALID_NUMBER", ""),
        (nothing, MONDAY, NUMBER_RAW, "no-such-campaign", "DENY", "UNKNOWN_CAMPAIGN", NUMBER.e164),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
async def test_each_decision_reaches_the_dialplan_with_its_audit_record(
    clean_redis: RedisServer,
    tmp_path: Path,
    setup: Setup,
    clock: datetime,
    number: str,
    campaign: str,
    expected: str,
    reason: str,
    e164: str,
) -> None:
    audit_dir = tmp_path / "audit"
    async with agi_server(clean_redis.url, audit_dir, clock=clock) as agi:
        await setup(agi.admin)
        result = await agi.call(number, campaign)
        record = assert_decision(agi, result, expected, reason, e164)
        assert record["campaign"] == campaign and record["number_raw"] == number
        # The journal file is the one of the call's UTC day, in the configured directory.
        day = clock.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d")
        assert [p.name for p in audit_dir.glob("audit-*.jsonl")] == [f"audit-{day}.jsonl"]
        await agi.settled()


async def test_the_fifth_session_to_one_number_meets_the_frequency_cap(agi: Agi) -> None:
    results = [await agi.call(NUMBER_RAW, "demo-press") for _ in range(5)]
    reasons = [r.variables["DIALGUARD_REASON"] for r in results]
    assert reasons == ["PRESS"] * 4 + ["FREQUENCY_CAP"]
    for result in results[:4]:
        assert_decision(agi, result, "ALLOW", "PRESS")
    record = assert_decision(agi, results[4], "DENY", "FREQUENCY_CAP")
    assert record["attempts_30d"] == 4
    counted = [agi.record(r.variables["DIALGUARD_ID"])["attempts_30d"] for r in results[:4]]
    assert counted == [1, 2, 3, 4]
    # Each session had its own decision id.
    assert len({r.variables["DIALGUARD_ID"] for r in results}) == 5


async def test_campaign_from_the_account_code_when_the_dialplan_passes_none(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with agi_server(
        clean_redis.url, tmp_path / "audit", campaign_from_accountcode=True
    ) as agi:
        result = await agi.call(NUMBER_RAW, env_overrides={"agi_accountcode": "demo-press"})
        assert_decision(agi, result, "ALLOW", "PRESS")
        result = await agi.call(NUMBER_RAW, env_overrides={"agi_accountcode": "demo-energy"})
        assert_decision(agi, result, "DENY", "SECTOR_BAN")


async def test_unknown_script_sets_nothing_and_the_server_goes_on(agi: Agi) -> None:
    assert_closed_silently(await agi.call(NUMBER_RAW, "demo-press", script="nope"))
    assert agi.records() == []
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


# --- the outcome script -------------------------------------------------------------------


def assert_outcome(agi: Agi, result: SessionResult, kind: str, campaign: str) -> Record:
    assert_clean(result, OUTCOME_VARIABLES)
    assert [c[2] for c in result.commands] == ["DIALGUARD_OUTCOME", "DIALGUARD_ID"]
    assert result.variables["DIALGUARD_OUTCOME"] == "RECORDED"
    record = agi.record(result.variables["DIALGUARD_ID"])
    assert record["kind"] == "outcome" and record["outcome"] == kind
    assert record["number"] == NUMBER.e164 and record["campaign"] == campaign
    assert not len(agi.service.pending)  # Redis took it: nothing waits
    assert record["adapter"] == "fastagi" and record["uniqueid"] == result.uniqueid
    return record


async def test_a_refusal_blocks_the_next_call(agi: Agi) -> None:
    await load_consent(agi.admin)
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-prospecting"), "ALLOW", "CONSENT")
    outcome = await agi.call(NUMBER_RAW, "refused", "demo-prospecting", script="outcome")
    assert_outcome(agi, outcome, "refused", "demo-prospecting")
    after = await agi.call(NUMBER_RAW, "demo-prospecting")
    assert_decision(agi, after, "DENY", "RECENT_REFUSAL")


async def test_a_do_not_call_request_blocks_every_campaign(agi: Agi) -> None:
    outcome = await agi.call("06 12 34 56 78", "do-not-call", "demo-press", script="outcome")
    assert_outcome(agi, outcome, "do-not-call", "demo-press")
    # The company's list is not per principal or purpose: even a survey is blocked.
    for campaign in ("demo-press", "demo-survey", "demo-prospecting"):
        assert_decision(agi, await agi.call(NUMBER_RAW, campaign), "DENY", "INTERNAL_DNC")


async def test_consents_and_contracts_added_live_decide_the_next_call(agi: Agi) -> None:
    """The Service methods the CLI and the HTTP API share (here as the service's Redis user
    when tests/test_redis_acl_tls.py runs this module)."""
    service, given = agi.service, MONDAY - timedelta(days=3)
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-prospecting"), "DENY", "NO_CONSENT")
    await service.add_consent(NUMBER_RAW, "ACME", "form:1", given_at=given, adapter="http")
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-prospecting"), "ALLOW", "CONSENT")
    await service.withdraw_consent(NUMBER_RAW, "ACME", MONDAY - timedelta(days=1))
    after = await agi.call(NUMBER_RAW, "demo-prospecting")
    assert_decision(agi, after, "DENY", "CONSENT_WITHDRAWN")
    other = normalise("0622222222")  # a number with every slot of its 30-day cap free

    async def energy() -> SessionResult:
        return await agi.call(other.raw, "demo-energy")

    assert_decision(agi, await energy(), "DENY", "SECTOR_BAN", other.e164)
    await service.add_contract(other.raw, "ACME", "CT-1", "energy_renovation")
    assert_decision(agi, await energy(), "ALLOW", "CONTRACT", other.e164)
    await service.end_contract(other.raw, "ACME", "CT-1")
    assert_decision(agi, await energy(), "DENY", "SECTOR_BAN", other.e164)
    assert not len(service.pending)  # Redis took each at once


@pytest.mark.parametrize(
    "args",
    [
        (NUMBER_RAW, "maybe", "demo-press"),
        (NUMBER_RAW, "REFUSED", "demo-press"),
        ("not a number", "refused", "demo-press"),
        (NUMBER_RAW, "refused", "no-such-campaign"),
        ("112", "do-not-call", "demo-press"),
        (NUMBER_RAW, "refused"),
        (),
    ],
)
async def test_invalid_outcome_arguments_change_nothing(agi: Agi, args: tuple[str, ...]) -> None:
    result = await agi.call(*args, script="outcome")
    assert_clean(result, OUTCOME_VARIABLES)
    assert result.variables == {"DIALGUARD_OUTCOME": "INVALID"}
    assert agi.records() == []
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


# --- Redis slow, frozen or down -------------------------------------------------------------


async def test_a_frozen_redis_gives_deadline_in_time_and_the_server_recovers(
    tmp_path: Path,
) -> None:
    with running_redis() as redis:
        async with agi_server(
            redis.url, tmp_path / "audit", deadline_ms=5000, redis_timeout_ms=3000
        ) as agi:
            # Warm up with a generous deadline: connection made, script loaded.
            warm = await agi.call("0611111111", "demo-press")
            assert_decision(agi, warm, "ALLOW", "PRESS", normalise("0611111111").e164)
            agi.server.settings = replace(agi.server.settings, deadline_ms=100)
            frozen_numbers = [NUMBER_RAW, "0633333331", "0633333332", "0633333333"]
            redis.pause()
            try:
                frozen = await agi.call(NUMBER_RAW, "demo-press")
                # More sessions while Redis is frozen: none waits behind the stuck reads.
                others = await asyncio.gather(
                    *(agi.call(raw, "demo-press") for raw in frozen_numbers[1:])
                )
            finally:
                redis.resume()
            for raw, result in zip(frozen_numbers, [frozen, *others], strict=True):
                record = assert_decision(agi, result, "DENY", "DEADLINE", normalise(raw).e164)
                assert record["degraded"]
                # Close to the deadline: not before it, far from Redis's own 3 s timeout.
                assert 0.09 <= result.elapsed < 1.0, result.elapsed

            # Redis is back: the same server answers normally again.
            for attempt in range(10):
                number = f"062222222{attempt}"
                result = await agi.call(number, "demo-press")
                assert_clean(result)
                if result.variables["DIALGUARD_RESULT"] == "ALLOW":
                    break
                assert result.variables["DIALGUARD_REASON"] == "DEADLINE"
                await asyncio.sleep(0.2)
            assert_decision(agi, result, "ALLOW", "PRESS", normalise(number).e164)
            await agi.settled()
            # Each frozen read reserved a slot when it finally ran: it was given back.
            await agi.drained()
            for raw in frozen_numbers:
                assert await agi.attempts(raw) == 0, raw


async def test_a_read_redis_runs_after_the_client_gave_up_counts_no_attempt(
    tmp_path: Path,
) -> None:
    # As shipped, redis.timeout_ms (250) is below deadline_ms (300): a Redis stall past the
    # socket timeout answers STORE_UNAVAILABLE.
    with running_redis() as redis:
        async with agi_server(
            redis.url, tmp_path / "audit", deadline_ms=5000, redis_timeout_ms=300
        ) as agi:
            warm = await agi.call("0611111111", "demo-press")
            assert_decision(agi, warm, "ALLOW", "PRESS", normalise("0611111111").e164)
            redis.pause()
            try:
                stalled = await agi.call(NUMBER_RAW, "demo-press")
                # Part of the scenario, not a wait: Redis stays frozen past the client's
                # timeout once more, so the first cancellation times out and is retried.
                await asyncio.sleep(0.3)
            finally:
                redis.resume()
            assert_decision(agi, stalled, "DENY", "STORE_UNAVAILABLE")
            # Redis runs what waited in its socket buffers, then the cancellation lands.
            await agi.drained()
            assert not agi.service.store.pending_cancels
            assert await agi.attempts(NUMBER_RAW) == 0, "a call never placed was counted"


def fail_open(campaign_name: str) -> Callable[[Config], Config]:
    def configure(config: Config) -> Config:
        campaigns = dict(config.campaigns)
        campaigns[campaign_name] = replace(campaigns[campaign_name], fail_mode=FailMode.OPEN)
        return replace(config, campaigns=campaigns)

    return configure


async def test_redis_down_fails_closed_unless_the_campaign_fails_open(tmp_path: Path) -> None:
    async with agi_server(REDIS_DOWN, tmp_path / "audit", configure=fail_open("demo-press")) as agi:
        closed = await agi.call(NUMBER_RAW, "demo-prospecting")
        assert assert_decision(agi, closed, "DENY", "STORE_UNAVAILABLE")["degraded"]
        opened = await agi.call(NUMBER_RAW, "demo-press")
        assert assert_decision(agi, opened, "ALLOW", "STORE_UNAVAILABLE")["degraded"]
        # A do-not-call request is kept in the journal even though Redis did not take it.
        pending = await agi.call(NUMBER_RAW, "do-not-call", "demo-press", script="outcome")
        assert_clean(pending, OUTCOME_VARIABLES)
        assert pending.variables["DIALGUARD_OUTCOME"] == "PENDING"
        (outcome,) = [r for r in agi.records() if r["kind"] == "outcome"]
        assert outcome["number"] == NUMBER.e164
        assert [c.id for c in agi.service.pending] == [outcome["id"]]  # waits for Redis
        assert pending.variables["DIALGUARD_ID"] == outcome["id"]  # the record that keeps it
        await agi.settled()


async def test_no_durable_audit_record_no_answer(clean_redis: RedisServer, tmp_path: Path) -> None:
    blocker = tmp_path / "journal"
    blocker.write_text("")  # a file where the journal's directory should go
    async with agi_server(clean_redis.url, blocker / "audit") as agi:
        for campaign in ("demo-press", "no-such-campaign"):
            assert_closed_silently(await agi.call(NUMBER_RAW, campaign))
        await agi.settled()
        # The disk is fixed: the same server answers again, with its records.
        blocker.unlink()
        result = await agi.call("0611111111", "demo-press")
        assert_decision(agi, result, "ALLOW", "PRESS", normalise("0611111111").e164)


# --- what Asterisk (or someone else) does on the wire ----------------------------------------


async def test_an_early_disconnect_leaks_no_session(agi: Agi) -> None:
    for _ in range(3):
        result = await agi.call(NUMBER_RAW, "demo-survey", disconnect_after_block=True)
        assert result.variables == {} and result.dangerous == []
    await agi.settled()
    # Each decision went on to its durable record although nobody heard it.
    assert [r["reason"] for r in agi.records()] == ["NON_COMMERCIAL"] * 3
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")
    await agi.settled()


@pytest.mark.parametrize("line_by_line", [True, False], ids=["line-by-line", "one-write"])
async def test_a_hangup_during_the_first_command_still_gets_every_variable(
    agi: Agi, line_by_line: bool
) -> None:
    result = await agi.call(
        NUMBER_RAW, "demo-press", hangup_before_reply=True, write_line_by_line=line_by_line
    )
    assert_decision(agi, result, "ALLOW", "PRESS")
    await agi.settled()
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"agi_callerid": "0" * 20_000}, id="one-line-of-20KiB"),
        pytest.param(
            {f"agi_arg_{n}": "x" * 180 for n in range(3, 103)}, id="100-args-of-180-bytes"
        ),
        pytest.param({f"agi_arg_{n}": "1" for n in range(3, 130)}, id="150-lines"),
    ],
)
async def test_an_oversized_block_is_cut_off_without_an_answer(
    agi: Agi, overrides: dict[str, str]
) -> None:
    result = await agi.call(NUMBER_RAW, "demo-press", env_overrides=overrides)
    assert_closed_silently(result)
    assert agi.records() == []
    await agi.settled()
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


async def test_a_large_but_legitimate_block_is_served(agi: Agi) -> None:
    # 60 extra arguments of 150 bytes: ~10 KiB, under the 16 KiB and 128-line bounds.
    overrides = {f"agi_arg_{n}": "y" * 150 for n in range(3, 63)}
    result = await agi.call(NUMBER_RAW, "demo-press", env_overrides=overrides)
    assert_decision(agi, result, "ALLOW", "PRESS")


VALID_BLOCK = (
    b"agi_network: yes\nagi_network_script: check\nagi_channel: Local/1@x-1;2\n"
    b"agi_uniqueid: 1.1\nagi_arg_1: 0612345678\nagi_arg_2: demo-press\n\n"
)


@pytest.mark.parametrize(
    ("data", "eof"),
    [
        pytest.param(b"hello world\n\n", False, id="garbage"),
        pytest.param(b"agi_network: yes\nno separator here\n\n", False, id="line-without-colon"),
        pytest.param(b"agi_network: yes\nnetwork: yes\n\n", False, id="not-an-agi-key"),
        pytest.param(b"\n", False, id="empty-block"),
        pytest.param(b"agi_network: yes\x00\n\n", False, id="nul-byte"),
        pytest.param(b"agi_network: yes\nagi_network: yes\n\n", False, id="repeated-key"),
        pytest.param(b"agi_network_script: check\nagi_arg_2: demo-press\n\n", False, id="arg-gap"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: dialguard\r\n\r\n", False, id="http-probe"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 3, True, id="tls-hello"),
        pytest.param(b"agi_network: yes\nagi_network_script: check\n", True, id="eof-mid-block"),
        pytest.param(VALID_BLOCK + b"EXEC System rm\n", False, id="a-command-after-the-block"),
    ],
)
async def test_a_malformed_block_is_cut_off_without_an_answer(
    agi: Agi, data: bytes, eof: bool
) -> None:
    started = time.monotonic()
    assert await raw_exchange(agi.port, data, eof=eof) == b""
    assert time.monotonic() - started < 2.0  # closed at once, not at the session bound
    await agi.settled()
    assert agi.records() == []
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


@pytest.mark.parametrize(
    ("args", "overrides", "reason", "e164"),
    [
        pytest.param(('06"12 ) EXEC System', "demo-press"), {}, "INVALID_NUMBER", "", id="quote"),
        pytest.param(("0612345678\\", "demo-press"), {}, "INVALID_NUMBER", "", id="backslash"),
        pytest.param(('"0612345678"', "demo-press"), {}, "INVALID_NUMBER", "", id="quoted-number"),
        pytest.param(
            (NUMBER_RAW, 'demo")(EXEC System rm'),
            {},
            "UNKNOWN_CAMPAIGN",
            NUMBER.e164,
            id="campaign-with-quote-and-paren",
        ),
        pytest.param(
            (NUMBER_RAW, "FILE(/etc/passwd)"),
            {},
            "UNKNOWN_CAMPAIGN",
            NUMBER.e164,
            id="campaign-as-function",
        ),
        # CR inside a block line is kept in the value by Asterisk's line-based block.
        pytest.param(
            (), {"agi_arg_1": "06\r12", "agi_arg_2": "demo-press"}, "INVALID_NUMBER", "", id="cr"
        ),
        pytest.param(
            (),
            {"agi_arg_1": NUMBER_RAW, "agi_arg_2": "demo-press\r EXEC System rm"},
            "UNKNOWN_CAMPAIGN",
            NUMBER.e164,
            id="cr-in-campaign",
        ),
    ],
)
@pytest.mark.parametrize("line_by_line", [True, False], ids=["line-by-line", "one-write"])
async def test_hostile_arguments_inject_nothing(
    agi: Agi,
    args: tuple[str, ...],
    overrides: dict[str, str],
    reason: str,
    e164: str,
    line_by_line: bool,
) -> None:
    # Both ways through the block parser: line by line, and the whole block at once.
    result = await agi.call(*args, env_overrides=overrides, write_line_by_line=line_by_line)
    assert_decision(agi, result, "DENY", reason, e164)
    assert all(len(command) == 4 for command in result.commands)
    assert b"EXEC" not in result.received and b"FILE" not in result.received
    await agi.settled()
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


async def test_a_cr_in_a_raw_block_is_an_invalid_number(agi: Agi) -> None:
    block = VALID_BLOCK.replace(b"agi_arg_1: 0612345678\n", b"agi_arg_1: 06\r12\n")
    variables = raw_variables(await raw_agi(agi.port, block))
    assert variables["DIALGUARD_RESULT"] == "DENY"
    assert variables["DIALGUARD_REASON"] == "INVALID_NUMBER"
    assert variables["DIALGUARD_NUMBER"] == ""
    assert agi.record(variables["DIALGUARD_ID"])["number_raw"] == "06\r12"


async def test_a_hangup_while_the_decision_is_taken_still_gets_every_variable(
    agi: Agi,
) -> None:
    # The caller hangs up before the first command: Asterisk says HANGUP unasked and
    # still runs SET VARIABLE on the dead channel.
    variables = raw_variables(await raw_agi(agi.port, VALID_BLOCK + b"HANGUP\n"))
    assert (variables["DIALGUARD_RESULT"], variables["DIALGUARD_REASON"]) == ("ALLOW", "PRESS")
    assert agi.record(variables["DIALGUARD_ID"])["uniqueid"] == "1.1"
    await agi.settled()


async def test_an_lf_in_an_argument_breaks_the_block_and_gets_no_answer(agi: Agi) -> None:
    # Asterisk writes "agi_arg_2: <value>\n" as is: an LF in the value starts a new block
    # line, "EXEC System rm", which is not "key: value". The server closes without a word.
    result = await agi.call(NUMBER_RAW, 'demo")\nEXEC System rm')
    assert_closed_silently(result)
    # An LF that starts an empty line ends the block early; what follows is no reply.
    result = await agi.call(NUMBER_RAW, "demo-press\n\n200 result=1")
    assert_closed_silently(result)
    await agi.settled()
    assert agi.records() == []
    assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


async def test_a_silent_client_is_cut_off_at_the_session_bound(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with agi_server(clean_redis.url, tmp_path / "audit", session_timeout_ms=300) as agi:
        reader, writer = await asyncio.open_connection(HOST, agi.port)
        try:
            started = time.monotonic()
            await wait_until(lambda: agi.server.sessions == 1)
            async with asyncio.timeout(5):
                assert await reader.read() == b""
            elapsed = time.monotonic() - started
        finally:
            writer.close()
        assert 0.25 <= elapsed < 2.0, elapsed
        await agi.settled()
        assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")


# --- many sessions at once -----------------------------------------------------------------


async def test_two_hundred_concurrent_sessions_each_get_their_own_answer(
    agi: Agi, redis_client: aioredis.Redis
) -> None:
    raws = [f"06{i:08d}" for i in range(1, 201)]
    numbers = [normalise(raw) for raw in raws]
    listed, capped = numbers[::3], numbers[1::3]
    store = agi.admin
    await load(store.lists, "dnc", [DncRow(n.key, "listed") for n in listed], "add")
    await asyncio.gather(
        *(
            store.count_attempt(n, "ACME", MONDAY - timedelta(days=1), 4, 30, f"seed{i}")
            for n in capped
            for i in range(4)
        )
    )
    await redis_client.config_resetstat()
    results = await asyncio.gather(*(agi.call(raw, "demo-press") for raw in raws))

    for number, result in zip(numbers, results, strict=True):
        if number in listed:
            expected = ("DENY", "INTERNAL_DNC")
        elif number in capped:
            expected = ("DENY", "FREQUENCY_CAP")
        else:
            expected = ("ALLOW", "PRESS")
        assert_decision(agi, result, *expected, number.e164)
    assert len({r.variables["DIALGUARD_ID"] for r in results}) == 200
    assert len(agi.records()) == 200
    # The sessions did share script calls (else this test would not test batching).
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] < 100, stats["cmdstat_evalsha"]
    await agi.settled()
    # A call the facts denied gave back the slot it had reserved; the capped stayed at 4.
    await agi.drained()
    counts = await asyncio.gather(*(agi.attempts(raw) for raw in raws))
    for number, count in zip(numbers, counts, strict=True):
        assert count == (0 if number in listed else 4 if number in capped else 1), number


# --- stopping -------------------------------------------------------------------------------


async def test_stop_lets_sessions_in_flight_finish_and_accepts_no_more(tmp_path: Path) -> None:
    with running_redis() as redis:
        async with agi_server(
            redis.url, tmp_path / "audit", deadline_ms=8000, redis_timeout_ms=8000
        ) as agi:
            port = agi.port
            assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")
            raws = ["0611111111", "0622222222", "0633333333"]
            redis.pause()
            try:
                sessions = [asyncio.create_task(agi.call(raw, "demo-press")) for raw in raws]
                await wait_until(lambda: agi.server.sessions == 3)
                stopping = asyncio.create_task(agi.server.stop(grace_s=10))
                # A window in which stop() would wrongly return: nothing to wait for, as
                # the sessions cannot finish while Redis is frozen.
                await asyncio.sleep(0.2)
                assert not stopping.done()
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection(HOST, port)
            finally:
                redis.resume()
            async with asyncio.timeout(10):
                results = await asyncio.gather(*sessions)
                await stopping
            for raw, result in zip(raws, results, strict=True):
                assert_decision(agi, result, "ALLOW", "PRESS", normalise(raw).e164)
            assert not agi.server.sessions
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, port)


async def test_stop_waits_for_a_connection_accepted_just_before_it(agi: Agi) -> None:
    # The moment a SIGTERM can fall in: the listener has accepted the connection (its
    # transport exists) but the session has not registered yet (connection_made is called
    # a loop turn later). stop() must still wait for that call's answer, or `dialguard
    # serve` closes the store and ends the loop with the call unanswered.
    session = asyncio.create_task(agi.call(NUMBER_RAW, "demo-press"))
    listener = agi.server._server  # asyncio's own count of accepted connections is the moment
    for _ in range(100_000):  # turn by turn: a sleep of any length would miss the moment
        if vars(listener)["_active_count"] > 0:
            break
        await asyncio.sleep(0)
    await agi.server.stop(grace_s=5)
    answered_before_stop_returned = len(agi.records())
    result = await session
    assert_decision(agi, result, "ALLOW", "PRESS")
    assert answered_before_stop_returned == 1, "stop() returned with the session in flight"


# --- the real command ---------------------------------------------------------------------


def write_serve_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    policy = ROOT / "config" / "policy" / "france.toml"
    path = tmp_path / "dialguard.toml"
    path.write_text(
        f"""
node = "serve-test"
[redis]
url = "redis://127.0.0.1:1/0"  # replaced by DIALGUARD_REDIS_URL
timeout_ms = 2000
[server]
host = "127.0.0.1"
port = {port}
deadline_ms = 5000
session_timeout_ms = 10000
[audit]
dir = {json.dumps(str(tmp_path / "audit"))}
[policy]
file = {json.dumps(str(policy))}
# Non-commercial: ALLOW at any hour, so the real clock of the subprocess does not matter.
[campaigns.demo-survey]
principal = "ACME"
purpose = "non_commercial"
"""
        + extra
    )
    return path


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    stderr: Path
    port: int

    def log(self) -> list[Record]:
        lines = self.stderr.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def events(self, name: str) -> list[Record]:
        return [entry for entry in self.log() if entry.get("event") == name]

    def worker_pids(self) -> list[int]:
        return [int(entry["pid"]) for entry in self.events("started")]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)

    def records(self) -> list[Record]:
        return audit_records(self.stderr.parent / "audit")


@asynccontextmanager
async def dialguard_serve(
    tmp_path: Path, redis_url: str, workers: int, extra_config: str = ""
) -> AsyncIterator[Served]:
    port = free_port()
    env = {
        **os.environ,
        "DIALGUARD_CONFIG": str(write_serve_config(tmp_path, port, extra_config)),
        "DIALGUARD_REDIS_URL": redis_url,
    }
    command = [str(Path(sys.executable).parent / "dialguard"), "serve", "--workers", str(workers)]
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        # Its own process group: the cleanup reaches the workers whatever happened.
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
            start_new_session=True,
        )
    served = Served(process, stderr_path, port)
    try:
        # Each worker logs "started" once its SIGTERM handler is in place.
        await wait_until(
            lambda: len(served.events("started")) == workers or process.poll() is not None, 20
        )
        assert process.poll() is None, stderr_path.read_text()
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):  # nobody left: all stopped cleanly
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def is_dead(pid: int) -> bool:
    """Exited: reaped, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def serve_sessions(served: Served, count: int) -> list[SessionResult]:
    raws = [f"07{i:08d}" for i in range(1, count + 1)]
    results: list[SessionResult] = await asyncio.gather(
        *(run_session(HOST, served.port, args=(raw, "demo-survey")) for raw in raws)
    )
    for raw, result in zip(raws, results, strict=True):
        assert_clean(result)
        assert [command[2] for command in result.commands] == CHECK_VARIABLES
        assert result.variables["DIALGUARD_RESULT"] == "ALLOW"
        assert result.variables["DIALGUARD_REASON"] == "NON_COMMERCIAL"
        assert result.variables["DIALGUARD_NUMBER"] == normalise(raw).e164
    return results


async def test_dialguard_serve_with_two_workers_answers_and_stops_on_sigterm(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with dialguard_serve(tmp_path, clean_redis.url, workers=2) as served:
        results = await serve_sessions(served, 20)
        started = time.monotonic()
        code = await asyncio.to_thread(served.stop)
        assert code == 0, served.stderr.read_text()
        assert time.monotonic() - started < 5

        log = served.log()  # one JSON object per line (json.loads raises otherwise)
        assert all({"event", "level", "timestamp"} <= set(entry) for entry in log)
        for event in ("listening", "started", "stopped"):
            assert len(served.events(event)) == 2, (event, log)
        assert len(set(served.worker_pids())) == 2
        assert {entry["port"] for entry in served.events("listening")} == {served.port}
        assert {entry["reuse_port"] for entry in served.events("listening")} == {True}
        # Every answer had its durable audit record, written by one of the workers.
        records = served.records()
        assert sorted(r["id"] for r in records) == sorted(
            r.variables["DIALGUARD_ID"] for r in results
        )
        assert {r["node"] for r in records} == {"serve-test"}
    with pytest.raises(OSError):  # nobody listens any more
        await asyncio.open_connection(HOST, served.port)


def test_each_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers share stderr: a line written in two pieces (print() writes the newline
    apart) can interleave with another worker's as '{..}{..}\\n\\n'."""

    class Raw(io.RawIOBase):
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.writes.append(bytes(data))
            return len(data)

    raw = Raw()
    # What Python makes of a stderr redirected to a file or a pipe: unbuffered, write-through.
    stderr = io.TextIOWrapper(cast(Any, raw), encoding="utf-8", write_through=True)
    monkeypatch.setattr(sys, "stderr", stderr)
    saved = structlog.get_config()
    try:
        configure_logging(logging.INFO)
        structlog.get_logger("dialguard.serve").info("started", pid=1)
    finally:
        structlog.configure(**saved)
    assert len(raw.writes) == 1, raw.writes
    assert json.loads(raw.writes[0])["event"] == "started"


async def test_dialguard_serve_reports_a_worker_killed_by_a_signal(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with dialguard_serve(tmp_path, clean_redis.url, workers=2) as served:
        killed = served.worker_pids()[0]
        os.kill(killed, signal.SIGKILL)
        # Dead before the SIGTERM goes out: it must not get the chance to exit cleanly.
        await wait_until(lambda: is_dead(killed), 5)
        code = await asyncio.to_thread(served.stop)
        assert code != 0, "a worker died from SIGKILL, yet `dialguard serve` exited 0"


async def test_two_workers_never_draw_the_same_decision_id(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with dialguard_serve(tmp_path, clean_redis.url, workers=2) as served:
        results = await serve_sessions(served, 20)
        assert await asyncio.to_thread(served.stop) == 0
    ids = [r.variables["DIALGUARD_ID"] for r in results]
    # new_id(): 12 hex digits of milliseconds, then what must tell apart every decision
    # made within one millisecond: a per-process tag and a per-process counter. With 20
    # sessions both workers answer some (SO_REUSEPORT): their tags must differ.
    assert all(re.fullmatch(r"[0-9a-f]{26}", i) for i in ids), ids
    assert len({i[12:] for i in ids}) == len(ids), sorted(i[12:] for i in ids)


async def test_a_do_not_call_taken_while_redis_is_down_is_enforced_when_it_returns(
    tmp_path: Path,
) -> None:
    """The worst failure this product can have, tried as an operator would: FastAGI, Redis
    stopped, a consumer says "never call me again"; Redis comes back empty."""
    redis_port = free_port()
    async with dialguard_serve(tmp_path, f"redis://127.0.0.1:{redis_port}/0", workers=1) as served:
        said = await run_session(
            HOST, served.port, script="outcome", args=(NUMBER_RAW, "do-not-call", "demo-survey")
        )
        assert said.variables["DIALGUARD_OUTCOME"] == "PENDING"
        (kept,) = [r for r in served.records() if r["kind"] == "outcome"]
        assert said.variables["DIALGUARD_ID"] == kept["id"]
        gap = await run_session(HOST, served.port, args=(NUMBER_RAW, "demo-survey"))
        assert gap.variables["DIALGUARD_REASON"] == "INTERNAL_DNC"  # no call in the gap
        with running_redis(redis_port):
            started = time.monotonic()
            while True:
                check = await run_session(HOST, served.port, args=(NUMBER_RAW, "demo-survey"))
                record = served.records()[-1]
                dnc = record["evidence"].get("dnc", {}).get("reason", "")
                if record["reason"] == "INTERNAL_DNC" and "pending" not in dnc:
                    break  # read from Redis itself, not from what waits in the service
                assert time.monotonic() - started < 5, record
                await asyncio.sleep(0.1)
            assert check.variables["DIALGUARD_REASON"] == "INTERNAL_DNC"
            assert served.stop() == 0
