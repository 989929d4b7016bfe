"""End to end: the fake Asterisk 22 ARI -> the real AriApp -> the real Service -> a real Redis.

Everything runs in-process on 127.0.0.1 (port 0), with a fixed policy clock (Monday
2026-11-30 11:00 Europe/Paris), the audit journal in tmp_path and the test session's private
redis-server. The last test runs the real `dialguard serve` command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dialguard.ari.app import AriApp
from dialguard.ari.client import (
    AriAuthError,
    AriClient,
    AriUnavailable,
    ChannelGone,
    NotInStasis,
)
from dialguard.audit import Journal
from dialguard.config import AriSettings, Config, load_config
from dialguard.model import FailMode
from dialguard.numbers import normalise
from dialguard.service import Service
from dialguard.store import Store
from tests.ari.fake_ari import FakeAri, FakeChannel
from tests.journal import audit_records
from tests.redis_server import RedisServer, free_port, running_redis
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PARIS = ZoneInfo("Europe/Paris")
MONDAY = datetime(2026, 11, 30, 11, 0, tzinfo=PARIS)
NUMBER_RAW = "0612345678"
NUMBER = normalise(NUMBER_RAW)
USER, PASSWORD = "dialguard", "s3cret-ari"
CHECK_VARIABLES = ["DIALGUARD_RESULT", "DIALGUARD_REASON", "DIALGUARD_ID", "DIALGUARD_NUMBER"]
REDIS_DOWN = "redis://127.0.0.1:1/0"

Record = dict[str, Any]


# --- the harness ------------------------------------------------------------------------


@dataclass
class Harness:
    fake: FakeAri
    app: AriApp
    service: Service
    store: Store

    def records(self) -> list[Record]:
        return audit_records(self.service.config.audit_dir)

    def record(self, record_id: str) -> Record:
        (found,) = [r for r in self.records() if r["id"] == record_id]
        return found

    async def call(self, number: str, campaign: str, **options: Any) -> FakeChannel:
        """One Stasis() call, waited for until the app has released the channel."""
        channel_id = await self.fake.start_call(number, campaign, **options)
        assert channel_id is not None, "no app connected: STASISSTATUS=FAILED"
        channel = self.fake.channels[channel_id]
        await wait_until(lambda: channel.settled)
        await wait_until(lambda: not self.app.busy_with(channel_id))
        return channel


@asynccontextmanager
async def ari_harness(
    url: str,
    audit_dir: Path,
    *,
    on_deny: str = "hangup",
    password: str = PASSWORD,
    configure: Callable[[Config], Config] = lambda config: config,
    recover_within_s: float = 10.0,
) -> AsyncIterator[Harness]:
    fake = FakeAri({USER: PASSWORD})
    await fake.start()
    config = load_config(ROOT / "config" / "dialguard.toml", env={"DIALGUARD_REDIS_URL": url})
    # Generous deadline unless a test is about it: a loaded 2-core machine must not turn a
    # slow turn of the event loop into a DEADLINE answer.
    config = configure(
        replace(
            config,
            audit_dir=audit_dir,
            node="test-node",
            server=replace(config.server, deadline_ms=5000),
        )
    )
    settings = AriSettings(fake.url, "dialguard", USER, password, on_deny)
    store = Store.from_url(url, config.redis.prefix, 2000)
    service = Service(config, store, Journal(audit_dir), clock=lambda: MONDAY)
    app = AriApp(service, settings, config.server, recover_within_s=recover_within_s)
    try:
        await app.start()
        yield Harness(fake, app, service, store)
    finally:
        await app.stop(grace_s=5)
        await service.aclose(2)  # releases may wait for a Redis that is down here
        await store.close()
        await fake.stop()


@pytest.fixture
async def ari(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Harness]:
    async with ari_harness(clean_redis.url, tmp_path / "audit") as harness:
        yield harness


def rest(fake: FakeAri, channel: FakeChannel) -> list[tuple[str, str]]:
    """What the app did to one channel: (method, what), in order."""
    done = []
    for call in fake.calls_for(channel.id):
        if call.path.endswith("/variable"):
            done.append((call.method, f"{call.query['variable']}={call.query['value']}"))
        elif call.method == "DELETE":
            done.append((call.method, f"reason_code={call.query.get('reason_code')}"))
        else:
            done.append((call.method, call.path.rsplit("/", 1)[1]))
    return done


def assert_decision(
    harness: Harness, channel: FakeChannel, result: str, reason: str, *, hangup: bool
) -> Record:
    """The four variables (sent together: any order), then exactly one release, last; the
    audit record with the same id."""
    # A channel recovered after a reconnect is read first (GET): not an action on it.
    acted = [action for action in rest(harness.fake, channel) if action[0] != "GET"]
    assert sorted(name.split("=")[0] for _, name in acted[:4]) == sorted(CHECK_VARIABLES)
    assert channel.variables["DIALGUARD_RESULT"] == result, channel.variables
    assert channel.variables["DIALGUARD_REASON"] == reason, channel.variables
    assert channel.variables["DIALGUARD_NUMBER"] == NUMBER.e164
    release = acted[4:]
    if hangup:
        assert release == [("DELETE", "reason_code=21")]
        assert channel.hangup_cause == 21 and not channel.continued
    else:
        assert release == [("POST", "continue")]
        assert channel.continued and channel.hangup_cause is None
    record = harness.record(channel.variables["DIALGUARD_ID"])
    assert (record["result"], record["reason"]) == (result, reason)
    assert record["adapter"] == "ari"
    assert record["uniqueid"] == channel.id
    assert record["channel"] == channel.json["name"]
    assert record["callerid"] == "0147000000"
    return record


# --- decisions ----------------------------------------------------------------------------


async def test_allow_sets_the_variables_then_continues(ari: Harness) -> None:
    channel = await ari.call(NUMBER_RAW, "demo-press")
    assert_decision(ari, channel, "ALLOW", "PRESS", hangup=False)
    facts = await ari.store.facts(NUMBER, "ACME", MONDAY, 30)
    assert facts.attempts_30d == 1  # counted, as any recorded decision


async def test_deny_sets_the_variables_then_hangs_up_with_cause_21(ari: Harness) -> None:
    await ari.store.dnc_add(NUMBER, "asked during a call", MONDAY - timedelta(days=3))
    channel = await ari.call(NUMBER_RAW, "demo-press")
    assert_decision(ari, channel, "DENY", "INTERNAL_DNC", hangup=True)


async def test_deny_continues_to_the_dialplan_when_configured(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with ari_harness(clean_redis.url, tmp_path / "audit", on_deny="continue") as ari:
        channel = await ari.call(NUMBER_RAW, "demo-prospecting")
        assert_decision(ari, channel, "DENY", "NO_CONSENT", hangup=False)


async def test_outcome_is_recorded_and_the_next_call_denied(ari: Harness) -> None:
    args = ("outcome", NUMBER_RAW, "do-not-call", "demo-press")
    channel = await ari.call(NUMBER_RAW, "demo-press", args=args)
    assert channel.variables["DIALGUARD_OUTCOME"] == "RECORDED"
    assert channel.continued
    record = ari.record(channel.variables["DIALGUARD_ID"])
    assert (record["kind"], record["outcome"], record["adapter"]) == (
        "outcome",
        "do-not-call",
        "ari",
    )
    assert record["uniqueid"] == channel.id
    after = await ari.call(NUMBER_RAW, "demo-press")
    assert_decision(ari, after, "DENY", "INTERNAL_DNC", hangup=True)


async def test_the_campaign_from_the_account_code(clean_redis: RedisServer, tmp_path: Path) -> None:
    def by_accountcode(config: Config) -> Config:
        return replace(config, server=replace(config.server, campaign_from_accountcode=True))

    async with ari_harness(clean_redis.url, tmp_path / "a", configure=by_accountcode) as ari:
        channel = await ari.call(NUMBER_RAW, "", args=(NUMBER_RAW,), accountcode="demo-press")
        assert_decision(ari, channel, "ALLOW", "PRESS", hangup=False)


async def test_redis_down_gives_each_campaign_its_fail_mode(tmp_path: Path) -> None:
    def press_fails_open(config: Config) -> Config:
        campaigns = dict(config.campaigns)
        campaigns["demo-press"] = replace(campaigns["demo-press"], fail_mode=FailMode.OPEN)
        return replace(config, campaigns=campaigns)

    async with ari_harness(REDIS_DOWN, tmp_path / "audit", configure=press_fails_open) as ari:
        closed = await ari.call(NUMBER_RAW, "demo-prospecting")
        assert assert_decision(ari, closed, "DENY", "STORE_UNAVAILABLE", hangup=True)["degraded"]
        opened = await ari.call(NUMBER_RAW, "demo-press")
        assert assert_decision(ari, opened, "ALLOW", "STORE_UNAVAILABLE", hangup=False)["degraded"]


async def test_a_frozen_redis_gives_deadline_in_time(tmp_path: Path) -> None:
    with running_redis() as redis:
        async with ari_harness(redis.url, tmp_path / "audit") as ari:
            warm = await ari.call("0611111111", "demo-press")  # connection made, script loaded
            assert warm.variables["DIALGUARD_RESULT"] == "ALLOW"
            ari.app.server = replace(ari.app.server, deadline_ms=100)
            redis.pause()
            try:
                started = time.monotonic()
                channel = await ari.call(NUMBER_RAW, "demo-press")
                elapsed = time.monotonic() - started
            finally:
                redis.resume()
            assert assert_decision(ari, channel, "DENY", "DEADLINE", hangup=True)["degraded"]
            assert elapsed < 1.5  # the deadline, not Redis's 2 s socket timeout


async def test_a_channel_that_hung_up_meanwhile_keeps_its_record(ari: Harness) -> None:
    ari.fake.rest_delay_s = 0.05
    channel_id = await ari.fake.start_call(NUMBER_RAW, "demo-press")
    assert channel_id is not None
    ari.fake.channels[channel_id].hangup_cause = 16  # the caller gave up: 404 from now on
    await wait_until(lambda: not ari.app.busy and len(ari.records()) == 1)
    assert ari.records()[0]["uniqueid"] == channel_id


# --- credentials and errors ---------------------------------------------------------------


async def test_bad_credentials_are_one_clear_line_at_start_up(tmp_path: Path) -> None:
    fake = FakeAri({USER: PASSWORD})
    await fake.start()
    client = AriClient(AriSettings(fake.url, "dialguard", USER, "wrong-password"))
    try:
        with pytest.raises(AriAuthError) as caught:
            await client.connect()
        message = str(caught.value)
        assert message == (
            f"ARI at {fake.url} refused user 'dialguard' (401): check [ari] user and its "
            "password against Asterisk's ari.conf"
        )
        assert "wrong-password" not in message and "\n" not in message
        assert fake.rejected == 1 and fake.connections == 0
        with pytest.raises(AriAuthError):  # REST too
            await client.application_channel_ids()
    finally:
        await client.close()
        await fake.stop()


async def test_the_fake_takes_basic_auth_or_api_key_and_refuses_the_rest() -> None:
    import aiohttp

    fake = FakeAri({USER: PASSWORD})
    await fake.start()
    url = f"{fake.url}/ari/applications/dialguard"
    try:
        # No application connected: Stasis() fails at once (STASISSTATUS=FAILED).
        assert await fake.start_call(NUMBER_RAW, "demo-press") is None
        async with aiohttp.ClientSession() as session:
            async with session.get(url, params={"api_key": f"{USER}:{PASSWORD}"}) as reply:
                assert reply.status == 200
            basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            async with session.get(url, headers={"Authorization": f"Basic {basic}"}) as reply:
                assert reply.status == 200
                assert (await reply.json())["channel_ids"] == []
            async with session.get(url, params={"api_key": f"{USER}:nope"}) as reply:
                assert reply.status == 401
                assert "Basic" in reply.headers["WWW-Authenticate"]
            async with session.get(url) as reply:
                assert reply.status == 401
    finally:
        await fake.stop()


async def test_client_errors_for_404_and_409_are_one_line(ari: Harness) -> None:
    client = ari.app.client
    with pytest.raises(ChannelGone, match=r"^ARI POST /channels/nope/continue: not found"):
        await client.continue_in_dialplan("nope")
    channel = await ari.call(NUMBER_RAW, "demo-press")  # continued: out of Stasis now
    with pytest.raises(NotInStasis, match="Channel not in Stasis application"):
        await client.continue_in_dialplan(channel.id)
    fetched = await client.channel(channel.id)
    assert (fetched.name, fetched.caller_number) == (channel.json["name"], "0147000000")
    assert fetched.stasis_args("dialguard") == (NUMBER_RAW, "demo-press")
    assert fetched.created is not None


# --- resilience -----------------------------------------------------------------------------


async def test_websocket_dropped_mid_load_every_parked_channel_settled_once(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with ari_harness(clean_redis.url, tmp_path / "audit") as ari:
        fake = ari.fake
        fake.rest_delay_s = 0.01  # slow enough for decisions to be in flight at the drop
        numbers = [f"07{i:08d}" for i in range(1, 91)]
        started: list[str] = []
        for number in numbers[:30]:  # delivered
            started.append(await fake.start_call(number, "demo-survey") or "")
        for number in numbers[30:60]:  # parked, their StasisStart lost with the connection
            started.append(await fake.start_call(number, "demo-survey", deliver=False) or "")
        await wait_until(lambda: ari.app.busy >= 10)  # in flight when the connection drops
        await fake.drop_websocket()
        await wait_until(fake.connected)  # the app reconnects on its own
        for number in numbers[60:]:  # and new calls flow again
            started.append(await fake.start_call(number, "demo-survey") or "")
        assert all(started)

        await wait_until(lambda: not fake.parked() and not ari.app.busy)
        assert ari.app.connections == 2
        records = ari.records()
        assert len(records) == len(numbers)
        assert Counter(r["uniqueid"] for r in records) == Counter(started)  # one each
        for channel_id in started:
            channel = fake.channels[channel_id]
            assert channel.continued and channel.variables["DIALGUARD_RESULT"] == "ALLOW"
            acted = [action for action in rest(fake, channel) if action[0] != "GET"]
            assert sorted(name.split("=")[0] for _, name in acted[:4]) == sorted(CHECK_VARIABLES)
            assert acted[4:] == [("POST", "continue")]  # set once, released once


async def test_asterisk_unreachable_answers_are_delivered_after_it_returns(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with ari_harness(clean_redis.url, tmp_path / "audit") as ari:
        fake = ari.fake
        fake.rest_delay_s = 0.2
        ids = [await fake.start_call(f"07{i:08d}", "demo-survey") for i in range(1, 6)]
        await wait_until(lambda: len(fake.calls) >= 5)  # their decisions taken, REST under way
        await fake.go_down()
        await wait_until(lambda: len(ari.records()) == 5 and not ari.app.busy)
        assert fake.parked()  # nothing could be delivered
        fake.rest_delay_s = 0.0
        fake.down = False
        await wait_until(lambda: not fake.parked() and not ari.app.busy)
        records = ari.records()
        assert sorted(r["uniqueid"] for r in records) == sorted(i or "" for i in ids)
        for channel_id in ids:
            channel = fake.channels[channel_id or ""]
            assert channel.continued
            record_ids = {r["id"] for r in records if r["uniqueid"] == channel_id}
            assert record_ids == {channel.variables["DIALGUARD_ID"]}  # the one decision


async def test_a_channel_parked_too_long_gets_the_fail_mode(ari: Harness) -> None:
    fake = ari.fake
    fresh = await fake.start_call(NUMBER_RAW, "demo-press", deliver=False)
    stale = await fake.start_call(NUMBER_RAW, "demo-press", deliver=False, created=time.time() - 60)
    await fake.drop_websocket()
    await wait_until(lambda: not fake.parked() and not ari.app.busy)
    fresh_channel, stale_channel = fake.channels[fresh or ""], fake.channels[stale or ""]
    assert_decision(ari, fresh_channel, "ALLOW", "PRESS", hangup=False)
    record = assert_decision(ari, stale_channel, "DENY", "DEADLINE", hangup=True)
    assert record["degraded"]


async def test_channels_left_by_a_crashed_process_are_settled_by_the_next(
    ari: Harness,
) -> None:
    fake = ari.fake
    ids = [await fake.start_call(f"07{i:08d}", "demo-survey", deliver=False) for i in (1, 2)]
    # A crash: the connection goes, nothing is settled (no stop()).
    assert ari.app._runner is not None
    ari.app._runner.cancel()
    await ari.app.client.close()
    await wait_until(lambda: not fake.connected())
    assert len(fake.parked()) == 2
    successor = AriApp(ari.service, ari.app.settings, ari.app.server)
    await successor.start()
    try:
        await wait_until(lambda: not fake.parked() and not successor.busy)
    finally:
        await successor.stop(grace_s=5)
    assert sorted(r["uniqueid"] for r in ari.records()) == sorted(i or "" for i in ids)
    assert all(fake.channels[i or ""].continued for i in ids)


async def test_stopping_settles_the_channels_in_flight_and_parked(ari: Harness) -> None:
    fake = ari.fake
    fake.rest_delay_s = 0.02
    ids = [await fake.start_call(f"07{i:08d}", "demo-survey") for i in range(1, 11)]
    ids += [
        await fake.start_call(f"07{i:08d}", "demo-survey", deliver=False) for i in range(11, 16)
    ]
    await wait_until(lambda: ari.app.busy > 0)
    await ari.app.stop(grace_s=5)
    assert not fake.parked()
    assert not fake.connected()  # no new calls for a stopping app: they fail closed
    assert sorted(r["uniqueid"] for r in ari.records()) == sorted(i or "" for i in ids)


# --- dialguard serve ----------------------------------------------------------------------


def write_config(tmp_path: Path, ari_url: str) -> Path:
    policy = ROOT / "config" / "policy" / "france.toml"
    path = tmp_path / "dialguard.toml"
    path.write_text(
        f"""
node = "serve-test"
[redis]
url = "redis://127.0.0.1:1/0"
[server]
host = "127.0.0.1"
port = {free_port()}
[audit]
dir = {json.dumps(str(tmp_path / "audit"))}
[policy]
file = {json.dumps(str(policy))}
[ari]
url = "{ari_url}"
app = "dialguard"
user = "{USER}"
[campaigns.demo-survey]
principal = "ACME"
purpose = "non_commercial"
"""
    )
    return path


async def run_serve(
    tmp_path: Path, ari_url: str, password: str, stderr: Any = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DIALGUARD_CONFIG": str(write_config(tmp_path, ari_url)),
        "DIALGUARD_ARI_PASSWORD": password,
    }
    command = [str(Path(sys.executable).parent / "dialguard"), "serve"]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        cwd=tmp_path,
        start_new_session=True,
    )


def test_the_ari_section_is_read_and_the_password_never_shown(tmp_path: Path) -> None:
    # The top-level key list once lacked "ari": any [ari] section was an "unknown key".
    path = write_config(tmp_path, "http://127.0.0.1:8088/")
    config = load_config(path, env={"DIALGUARD_ARI_PASSWORD": PASSWORD})
    assert config.ari == AriSettings("http://127.0.0.1:8088", "dialguard", USER, PASSWORD)
    assert PASSWORD not in repr(config)
    assert config.ari.on_deny == "hangup"


async def test_dialguard_serve_with_bad_credentials_exits_with_one_line(tmp_path: Path) -> None:
    fake = FakeAri({USER: PASSWORD})
    await fake.start()
    process = await run_serve(tmp_path, fake.url, "wrong-password")
    try:
        _, stderr = await asyncio.to_thread(process.communicate, None, 20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await fake.stop()
    text = stderr.decode()
    assert process.returncode == 1, text
    plain = [line for line in text.splitlines() if not line.startswith("{")]
    assert plain == [
        f"dialguard: ARI at {fake.url} refused user 'dialguard' (401): check [ari] user and "
        "its password against Asterisk's ari.conf"
    ]
    assert "Traceback" not in text and "wrong-password" not in text


async def test_dialguard_serve_runs_the_ari_app_and_stops_on_sigterm(tmp_path: Path) -> None:
    fake = FakeAri({USER: PASSWORD})
    await fake.start()
    process = await run_serve(tmp_path, fake.url, PASSWORD)
    try:
        await wait_until(lambda: fake.connected() or process.poll() is not None, 20)
        assert process.poll() is None
        parked = await fake.start_call("0700000001", "demo-survey", deliver=False)
        channel_id = await fake.start_call("0700000002", "demo-survey")
        await wait_until(lambda: fake.channels[channel_id or ""].settled)
        process.terminate()
        _, stderr = await asyncio.to_thread(process.communicate, None, 20)
        assert process.returncode == 0, stderr.decode()
        # Redis is down for this config: fail closed, DENY with cause 21, both channels.
        for settled in (parked, channel_id):
            channel = fake.channels[settled or ""]
            assert channel.variables["DIALGUARD_REASON"] == "STORE_UNAVAILABLE"
            assert channel.hangup_cause == 21
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await fake.stop()


async def test_dialguard_serve_waits_for_an_asterisk_not_up_yet(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log_file:
        process = await run_serve(tmp_path, f"http://127.0.0.1:{port}", PASSWORD, log_file)
    fake = FakeAri({USER: PASSWORD})
    try:
        # Up and serving FastAGI, retrying ARI in the background (a log line per attempt).
        await wait_until(lambda: "ari_connect_failed" in log_path.read_text(), 20)
        assert process.poll() is None
        await fake.start(port)
        await wait_until(lambda: fake.connected() or process.poll() is not None, 20)
        channel_id = await fake.start_call("0700000001", "demo-survey")
        await wait_until(lambda: fake.channels[channel_id or ""].settled)
        process.terminate()
        await asyncio.to_thread(process.wait, 20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await fake.stop()
    text = log_path.read_text()
    assert process.returncode == 0, text
    assert "Traceback" not in text
    events = [json.loads(line)["event"] for line in text.splitlines()]  # JSON lines only
    assert "ari_unavailable_at_start" in events and "ari_connected" in events


async def test_an_unreachable_asterisk_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = AriClient(AriSettings(url, "dialguard", USER, PASSWORD))
    try:
        with pytest.raises(AriUnavailable) as caught:
            await client.connect()
        with pytest.raises(AriUnavailable) as rest_caught:
            await client.application_channel_ids()
    finally:
        await client.close()
    assert str(caught.value).startswith(f"ARI events: cannot reach {url}: ")
    assert str(rest_caught.value).startswith(f"ARI GET /applications/dialguard: cannot reach {url}")
    assert "\n" not in str(caught.value) + str(rest_caught.value)
