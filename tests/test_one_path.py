"""Every write goes through the service, spelled the way a call is: outcomes and live
changes normalise as `decide` does, refuse what no list may hold, and forced fail-mode
decisions never ask Redis."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dialguard.audit import Journal
from dialguard.model import CallRequest, FailMode, Reason, Result, Unavailable
from dialguard.numbers import InvalidNumber, NotListable
from dialguard.service import OutcomeKind, OutcomeStatus, Service
from dialguard.store import Store
from tests.journal import audit_records
from tests.redis_server import RedisServer
from tests.test_service import MONDAY, make_config

ROOT = Path(__file__).parent.parent


@pytest.fixture
async def service(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> AsyncIterator[Service]:
    config = make_config(redis_server.url, tmp_path / "audit")
    # A PBX that puts 0 before every external number, as many do; failing open.
    prefixed = replace(config.campaigns["demo-press"], outside_prefix="0", fail_mode=FailMode.OPEN)
    config = replace(config, campaigns={**config.campaigns, "demo-press": prefixed})
    store = Store.from_settings(config.redis)
    yield Service(config, store, Journal(config.audit_dir))
    await store.close()


async def test_an_outcome_reads_the_number_as_the_campaign_dials_it(service: Service) -> None:
    dialled = CallRequest("00612345678", "demo-press")  # outside-line 0, then 0612345678
    assert (await service.decide(dialled, now=MONDAY)).decision.allowed
    result = await service.record_outcome(dialled, OutcomeKind.DO_NOT_CALL, now=MONDAY)
    assert result.status is OutcomeStatus.RECORDED
    assert result.number is not None and result.number.e164 == "+33612345678"
    assert (await service.decide(dialled, now=MONDAY)).decision.reason is Reason.INTERNAL_DNC
    (record,) = audit_records(service.config.audit_dir)
    assert record["id"] == result.id and record["number"] == "+33612345678"


@pytest.mark.parametrize(
    ("number", "kind", "campaign", "says"),
    [
        ("0112", "do-not-call", "demo-press", "never blocked"),
        ("612345678", "do-not-call", "demo-press", "outside-line"),  # no 0 in front
        ("00612345678", "hung-up", "demo-press", "outcome 'hung-up'"),
        ("00612345678", "refused", "no-such-campaign", "unknown campaign"),
    ],
)
async def test_an_outcome_that_cannot_be_recorded_records_nothing(
    service: Service, number: str, kind: str, campaign: str, says: str
) -> None:
    result = await service.record_outcome(CallRequest(number, campaign), kind, now=MONDAY)
    assert result.status is OutcomeStatus.INVALID and says in result.detail
    assert result.id == "" and audit_records(service.config.audit_dir) == []


async def test_no_list_holds_an_emergency_number(service: Service) -> None:
    for change in (
        service.dnc_add("112", "test"),
        service.dnc_remove("15", "test"),
        service.withdraw_consent("17", "ACME"),
    ):
        with pytest.raises(NotListable, match="never blocked"):
            await change
    with pytest.raises(InvalidNumber):
        await service.dnc_add("not a number", "test")


async def test_a_forced_fail_mode_decision_does_not_ask_redis(
    service: Service, redis_server: RedisServer
) -> None:
    late = Unavailable(Reason.DEADLINE, "channel found parked, older than 10 s")
    redis_server.pause()  # a read would wait for its deadline; none is made
    try:
        closed = await service.decide(
            CallRequest("0612345678", "demo-prospecting"), now=MONDAY, unavailable=late
        )
        opened = await service.decide(
            CallRequest("00612345678", "demo-press"), now=MONDAY, unavailable=late
        )
    finally:
        redis_server.resume()
    assert (closed.decision.result, closed.decision.reason) == (Result.DENY, Reason.DEADLINE)
    assert "older than 10 s" in closed.decision.degraded
    assert (opened.decision.result, opened.decision.reason) == (Result.ALLOW, Reason.DEADLINE)


async def test_aclose_lets_slot_releases_go_out(
    service: Service, redis_client: aioredis.Redis
) -> None:
    # A slot is reserved with the facts read, and given back when they deny the call.
    await service.dnc_add("0612345678", "test", MONDAY)
    verdict = await service.decide(
        CallRequest("00612345678", "demo-press"), now=MONDAY, record=True
    )
    assert verdict.decision.reason is Reason.INTERNAL_DNC
    await service.aclose()
    await service.store.close()  # drains the release batch (it lingers 50 ms otherwise)
    attempts = service.store.keys.attempts(
        service.config.campaigns["demo-press"].principal, "33612345678"
    )
    assert await redis_client.zcard(attempts) == 0


def _bound(section: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import os, time
        from dialguard.agi import classic
        bound = classic.SessionBound()
        bound.BACKSTOP_S = 0.5
        bound.arm(time.monotonic() + 0.05)
        with bound.deferred():
            {section}
            os.write(2, b"record written\\n")
        os.write(2, b"answer sent\\n")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_classic_session_bound_waits_for_the_record_in_progress() -> None:
    """The bound ends the process, but not between counting an attempt and its record."""
    run = _bound("time.sleep(0.3)")  # the decision and its audit record, past the bound
    assert run.returncode == 3  # EXIT_TIMEOUT, once the section is over
    assert "record written" in run.stderr and "answer sent" not in run.stderr
    assert "session_timeout_ms passed; exiting" in run.stderr


def test_the_classic_session_bound_waits_no_longer_than_its_backstop() -> None:
    """A journal that never answers does not hold the channel for ever."""
    started = time.monotonic()
    run = _bound("time.sleep(20)")
    assert run.returncode == 3 and time.monotonic() - started < 10
    assert "record written" not in run.stderr
    assert "record is still not written" in run.stderr


def test_an_unexpected_error_is_one_line_and_exit_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dialguard import cli

    check = sys.modules["dialguard.cli.check"]  # the module; `cli.check` is the command

    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError("a bug of ours near redis://dg:s3cret@db:6379/0")

    monkeypatch.setattr(check, "load_config", broken)
    monkeypatch.setattr(sys, "argv", ["dialguard", "check", "0612345678", "--campaign", "x"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "dialguard: internal error: KeyError: 'a bug of ours near redis://dg:***@db:6379/0'"
        " (please report it)"
    )


def test_a_list_loaded_after_midnight_in_paris_is_not_a_day_old() -> None:
    from zoneinfo import ZoneInfo

    from dialguard.cli.lists import age_days

    paris = ZoneInfo("Europe/Paris")
    loaded = "2026-11-30T23:30:00+00:00"  # 00:30 on 1 December in Paris
    assert age_days(loaded, date(2026, 12, 1), paris) == 0
    assert age_days(loaded, date(2026, 12, 2), paris) == 1
    assert age_days(None, date(2026, 12, 1), paris) is None
