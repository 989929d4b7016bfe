"""Live reload: SIGHUP and `dialguard reload` read the configuration and the policy again;
a bad file is refused with the start-up message and the running configuration stays;
sessions in flight finish under the configuration they started with; each reload is an
audit record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dialguard.audit import Journal
from dialguard.config import Config, ConfigError, load_config
from dialguard.model import Mode
from dialguard.reload import Reloader, compare, in_force
from dialguard.runfiles import PID_NAME, PidFile, running_service
from tests.agi.asterisk_peer import run_session
from tests.agi.test_server import NUMBER_RAW, agi_server
from tests.cli_runner import run_dialguard
from tests.journal import audit_records
from tests.redis_server import RedisServer, free_port, running_redis
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

# Non-commercial calls are allowed at any hour: the subprocess's real clock does not matter.
CONFIG = """
node = "reload-test"
[redis]
url = "redis://127.0.0.1:1/0"  # replaced by DIALGUARD_REDIS_URL
timeout_ms = 2000
[server]
host = "127.0.0.1"
port = {port}
deadline_ms = 5000
session_timeout_ms = 10000
[audit]
dir = "audit"
[policy]
file = "policy.toml"
[campaigns.demo-survey]
principal = "ACME"
purpose = "non_commercial"
[campaigns.demo-prospecting]
principal = "ACME"
purpose = "prospecting"
"""


@dataclass
class Site:
    """A configuration directory: dialguard.toml, its policy, its journal."""

    directory: Path
    port: int

    @property
    def config(self) -> Path:
        return self.directory / "dialguard.toml"

    @property
    def policy(self) -> Path:
        return self.directory / "policy.toml"

    @property
    def audit(self) -> Path:
        return self.directory / "audit"

    def edit_policy(self, old: str, new: str) -> None:
        text = self.policy.read_text()
        assert old in text
        self.policy.write_text(text.replace(old, new))

    def edit_config(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text
        self.config.write_text(text.replace(old, new))

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.audit) if r.get("kind", "decision") == kind]


def make_site(directory: Path) -> Site:
    site = Site(directory, free_port())
    site.config.write_text(CONFIG.format(port=site.port))
    site.policy.write_bytes((ROOT / "config" / "policy" / "france.toml").read_bytes())
    return site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    stderr: Path

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.stderr.read_text().splitlines()
        return [e for e in map(json.loads, filter(None, lines)) if e.get("event") == name]


@contextlib.contextmanager
def serving(site: Site, redis_url: str, workers: int = 1) -> Iterator[Running]:
    env = {**os.environ, "DIALGUARD_CONFIG": str(site.config), "DIALGUARD_REDIS_URL": redis_url}
    command = [str(Path(sys.executable).parent / "dialguard"), "serve", "--workers", str(workers)]
    stderr_path = site.directory / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    running = Running(process, stderr_path)
    try:
        yield running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


async def started(running: Running, workers: int = 1) -> None:
    await wait_until(
        lambda: len(running.events("started")) == workers or running.process.poll() is not None,
        20,
    )
    assert running.process.poll() is None, running.stderr.read_text()


async def decide(site: Site, campaign: str = "demo-survey") -> dict[str, str]:
    result = await run_session(HOST, site.port, args=("0712345678", campaign))
    return result.variables


def reload_cli(site: Site, *args: str) -> Any:
    return run_dialguard(["reload", *args], env={"DIALGUARD_CONFIG": str(site.config)})


async def test_dialguard_reload_puts_a_new_policy_and_campaign_in_force(
    clean_redis: RedisServer, site: Site
) -> None:
    with serving(site, clean_redis.url) as running:
        await started(running)
        old_hash = load_config(site.config, env={}).policy.hash
        before = await decide(site, "demo-prospecting")
        assert before["DIALGUARD_RESULT"] == "DENY"

        site.edit_policy('name = "france"', 'name = "france-2027"')
        site.edit_config(
            '[campaigns.demo-prospecting]\nprincipal = "ACME"',
            '[campaigns.demo-prospecting]\nmode = "shadow"\nprincipal = "ACME"',
        )
        result = await asyncio.to_thread(reload_cli, site, "--operator", "alice")
        assert result.code == 0, result.err
        new_hash = load_config(site.config, env={}).policy.hash
        assert result.out == (
            f"reloaded (pid {running.process.pid}): policy france {old_hash} -> france-2027"
            f" {new_hash}; campaign demo-prospecting: mode enforce -> shadow\n"
        )

        after = await decide(site, "demo-prospecting")
        assert after["DIALGUARD_RESULT"] == "ALLOW"
        assert after["DIALGUARD_REASON"].startswith("SHADOW_")
        decisions = {r["id"]: r for r in site.records("decision")}
        version = load_config(site.config, env={}).policy.on(datetime.now(UTC)).id
        assert decisions[before["DIALGUARD_ID"]]["policy"] == {
            "name": "france",
            "version": version,
            "hash": old_hash,
        }
        assert decisions[after["DIALGUARD_ID"]]["policy"] == {
            "name": "france-2027",
            "version": version,
            "hash": new_hash,
        }
        [record] = site.records("reload")
        assert record["applied"] is True and record["operator"] == "alice"
        assert record["policy_from"] == {"name": "france", "hash": old_hash}
        assert record["policy_to"] == {"name": "france-2027", "hash": new_hash}
        assert record["config_from"] != record["config_to"]
        assert record["node"] == "reload-test"
        # The journal's chain takes the record like any other.
        assert run_dialguard(["audit", "verify", "--dir", site.audit]).code == 0
        listed = run_dialguard(
            ["audit", "search", "--dir", site.audit, "--kind", "reload"], env={"COLUMNS": "200"}
        )
        assert f"RELOAD  policy france-2027 {new_hash}" in listed.out


async def test_a_bad_file_is_refused_with_the_start_up_message_and_nothing_changes(
    clean_redis: RedisServer, site: Site
) -> None:
    with serving(site, clean_redis.url) as running:
        await started(running)
        old_hash = load_config(site.config, env={}).policy.hash
        site.edit_policy("max_attempts = 4", 'max_attempts = "four"')
        with pytest.raises(ConfigError) as at_start:
            load_config(site.config, env={})
        start_up_message = str(at_start.value)

        refused = await asyncio.to_thread(reload_cli, site, "--operator", "carol")
        assert (refused.code, refused.err) == (
            1,
            f"dialguard: reload refused: {start_up_message}\n",
        )

        # A bare SIGHUP (kill -HUP, systemd's ExecReload): refused the same way.
        running.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: len(running.events("reload_refused")) == 2, 10)
        assert {e["error"] for e in running.events("reload_refused")} == {start_up_message}
        assert running.process.poll() is None
        variables = await decide(site)
        assert variables["DIALGUARD_RESULT"] == "ALLOW"
        decision = {r["id"]: r for r in site.records("decision")}[variables["DIALGUARD_ID"]]
        assert decision["policy"]["hash"] == old_hash
        records = site.records("reload")
        assert [(r["applied"], r["operator"]) for r in records] == [
            (False, "carol"),
            (False, "SIGHUP"),
        ]
        assert {r["why"] for r in records} == {start_up_message}
        assert {r["policy_to"]["hash"] for r in records} == {old_hash}
        assert {r["config_to"] for r in records} == {records[0]["config_from"]}
        assert not (site.audit / "reload.request").exists()  # cleared once answered


async def test_reload_with_two_workers_reaches_both_and_records_once(
    clean_redis: RedisServer, site: Site
) -> None:
    with serving(site, clean_redis.url, workers=2) as running:
        await started(running, workers=2)
        site.edit_policy('name = "france"', 'name = "france-b"')
        result = await asyncio.to_thread(reload_cli, site, "--operator", "bob")
        assert result.code == 0, result.err
        assert result.out.startswith(f"reloaded (pid {running.process.pid}, 2 workers): ")
        records = site.records("reload")
        assert sorted(r["worker"] for r in records) == [0, 1]  # each says what it runs
        assert {r["operator"] for r in records} == {"bob"}
        assert len({r["pid"] for r in records}) == 2
        answers = await asyncio.gather(*(decide(site) for _ in range(20)))
        names = {
            r["policy"]["name"]
            for r in site.records("decision")
            if r["id"] in {a["DIALGUARD_ID"] for a in answers}
        }
        assert names == {"france-b"}


def test_reload_with_no_service_running_says_so(site: Site) -> None:
    result = reload_cli(site)
    assert result.code == 2
    assert result.err.startswith("dialguard: no dialguard serve runs with")


async def test_a_second_serve_on_the_same_journal_is_refused(
    clean_redis: RedisServer, site: Site
) -> None:
    with serving(site, clean_redis.url) as running:
        await started(running)
        service = running_service(site.audit)
        assert service is not None and (service.pid, service.workers) == (running.process.pid, 1)
        env = {**os.environ, "DIALGUARD_CONFIG": str(site.config)}
        env["DIALGUARD_REDIS_URL"] = clean_redis.url
        second = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "dialguard"), "serve"],
            env=env,
            capture_output=True,
            timeout=20,
        )
        assert second.returncode == 2
        assert second.stderr.decode().startswith(
            f"dialguard: another dialguard serve (pid {running.process.pid}) runs"
        )
    # Gone (even killed): its pid file no longer names a running service.
    assert running_service(site.audit) is None


def test_a_leftover_pid_file_names_nobody(tmp_path: Path) -> None:
    held = PidFile.acquire(tmp_path, 1)
    assert (tmp_path / PID_NAME).read_text() == f"{os.getpid()}\n1\n"
    held.release()
    assert (tmp_path / PID_NAME).read_text() == ""  # emptied, never removed
    (tmp_path / PID_NAME).write_text("1\n1\n")  # pid 1 runs, but holds no lock on it
    assert running_service(tmp_path) is None


async def test_a_sighup_during_start_up_is_held_until_the_service_can_reload(
    clean_redis: RedisServer, site: Site
) -> None:
    with serving(site, clean_redis.url) as running:
        pid_file = site.audit / PID_NAME
        await wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 20)
        running.process.send_signal(signal.SIGHUP)  # before it listens
        await started(running)
        await wait_until(lambda: bool(running.events("reloaded")), 10)
        assert running.process.poll() is None


async def test_workers_stop_when_their_parent_is_killed(
    clean_redis: RedisServer, site: Site
) -> None:
    with serving(site, clean_redis.url, workers=2) as running:
        await started(running, workers=2)
        workers = [e["pid"] for e in running.events("started")]
        running.process.kill()
        running.process.wait(5)

        def gone(pid: int) -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return True
            return state in ("Z", "X")

        await wait_until(lambda: all(map(gone, workers)), 10)
        assert len(running.events("parent_gone")) == 2
        assert running_service(site.audit) is None


@asynccontextmanager
async def reloadable(redis: RedisServer, site: Site) -> AsyncIterator[tuple[Any, Reloader]]:
    env = {"DIALGUARD_REDIS_URL": redis.url}

    def configure(_: Config) -> Config:
        return load_config(site.config, env=env)

    async with agi_server(redis.url, site.audit, configure=configure) as agi:

        def put_in_force(new: Config) -> None:
            agi.service.reconfigure(new)
            agi.server.reconfigure(new.server)

        config, journal = agi.service.config, Journal(site.audit)
        yield agi, Reloader(config, journal, put_in_force, env=env)


async def test_a_session_in_flight_finishes_under_the_configuration_it_started_with(
    site: Site,
) -> None:
    with running_redis() as redis:
        async with reloadable(redis, site) as (agi, reloader):
            old_hash = agi.service.config.policy.hash
            redis.pause()  # the next decision waits for its facts
            in_flight = asyncio.create_task(agi.call(NUMBER_RAW, "demo-prospecting"))
            await wait_until(lambda: agi.server.sessions == 1, 5)
            await asyncio.sleep(0.2)  # its decision has started and waits on Redis
            site.edit_policy('name = "france"', 'name = "france-next"')
            result = await reloader.reload()
            assert result.applied, result.message
            redis.resume()
            old = await in_flight
            new = await agi.call(NUMBER_RAW, "demo-prospecting")
            assert agi.record(old.variables["DIALGUARD_ID"])["policy"]["hash"] == old_hash
            assert agi.record(new.variables["DIALGUARD_ID"])["policy"]["name"] == "france-next"


def test_what_only_a_restart_changes_is_kept_as_running(site: Site) -> None:
    old = load_config(site.config, env={})
    site.edit_config(f"port = {site.port}\n", "port = 4999\n")  # a restart's business
    site.edit_config('node = "reload-test"', 'node = "elsewhere"')
    site.edit_config("deadline_ms = 5000", "deadline_ms = 700")
    site.edit_config(
        '[campaigns.demo-survey]\nprincipal = "ACME"',
        '[campaigns.demo-survey]\nmode = "shadow"\nprincipal = "ACME"',
    )
    new = load_config(site.config, env={})
    changes = compare(old, new)
    assert changes.applied == (
        "campaign demo-survey: mode enforce -> shadow",
        "server.deadline_ms 5000 -> 700",
    )
    assert changes.restart_needed == ("server.port", "node")
    running = in_force(old, new)
    assert (running.server.port, running.node) == (old.server.port, old.node)
    assert running.server.deadline_ms == 700
    assert running.campaigns["demo-survey"].mode is Mode.SHADOW


async def test_a_reload_that_cannot_be_recorded_changes_nothing(tmp_path: Path, site: Site) -> None:
    with running_redis() as redis:
        async with reloadable(redis, site) as (agi, _):
            blocker = tmp_path / "not-a-directory"
            blocker.write_text("")
            config = agi.service.config

            def put_in_force(new: Config) -> None:
                agi.service.reconfigure(new)

            env = {"DIALGUARD_REDIS_URL": redis.url}
            unrecorded = Reloader(config, Journal(blocker / "audit"), put_in_force, env=env)
            site.edit_policy('name = "france"', 'name = "france-unrecorded"')
            result = await unrecorded.reload()
            assert not result.applied
            assert result.message.startswith("cannot write the reload's audit record")
            assert agi.service.config is config


async def test_any_error_reading_the_file_is_a_refusal_in_one_line(site: Site) -> None:
    with running_redis() as redis:
        async with reloadable(redis, site) as (agi, reloader):
            config = agi.service.config
            site.edit_config('file = "policy.toml"', 'file = "pol\\u0000icy.toml"')
            result = await reloader.reload()
            assert not result.applied and "\n" not in result.message
            assert agi.service.config is config
            [record] = [r for r in audit_records(site.audit) if r.get("kind") == "reload"]
            assert record["applied"] is False and record["why"] == result.message
