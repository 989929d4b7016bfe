"""Least privilege and TLS to Redis.

The ACL: config/redis-acl.conf is the rule docs/operations.md gives; the FastAGI tests
(tests/agi/test_server.py: decisions, outcomes, pending changes, `dialguard serve`), the
HTTP API's (tests/api/test_api.py: its changes, Idempotency-Key answers), the
metrics, health and shadow-mode tests run again with the service logged in as its
`dialguard` user, and fail on anything Redis refused it. TLS: a redis-server with a
--tls-port and a certificate from a CA the test makes; the service trusts that CA through
[redis] tls_ca_file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError

from dialguard.audit import Journal
from dialguard.config import Config, load_config
from dialguard.import_files import ConsentRow, ContractRow
from dialguard.model import CallRequest, Contract, Reason, Sector
from dialguard.numbers import normalise
from dialguard.service import Service, Verdict
from dialguard.store import Store
from dialguard.store.loading import load
from tests.agi.test_server import MONDAY, make_config
from tests.cli_runner import run_dialguard
from tests.redis_ha import TlsFiles, make_tls_files
from tests.redis_server import ACL_ENV, SERVICE_USER, free_port, running_redis

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "tests/agi/test_server.py",
    "tests/test_metrics.py",
    "tests/test_health.py",
    "tests/test_shadow.py",
    "tests/api/test_api.py",
]


def test_the_fastagi_tests_pass_as_the_acl_user_of_the_service() -> None:
    env = {**os.environ, ACL_ENV: "1", "DIALGUARD_TEST_REDIS_USER": "dialguard"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *MODULES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "[100%]" in run.stdout


def test_the_acl_check_sees_what_redis_refuses() -> None:
    """The check above can fail: a command or a key outside the rule is refused, logged,
    and the server's stop reports it."""
    refused = r"command keys \(dialguard\).*key other:x"
    with pytest.raises(AssertionError, match=refused), running_redis(acl=True) as server:
        client = redis.Redis.from_url(server.url)
        with pytest.raises(NoPermissionError):
            client.keys("*")
        with pytest.raises(NoPermissionError):
            client.hget("other:x", "f")
        client.hset("dialguard:x", "f", "1")  # its own keys, a command it has
        client.close()


async def test_live_changes_and_their_late_application_as_the_service_user(
    tmp_path: Path,
) -> None:
    """What the FastAGI tests do not reach: a removal and a withdrawal, applied at once and
    applied late by a service that starts (the applied marks read back)."""
    with running_redis(acl=True) as server:
        config = make_config(server.url, tmp_path / "audit")
        down = make_config("redis://127.0.0.1:1/0", tmp_path / "audit")
        offline = Service(down, Store.from_settings(down.redis, 300), Journal(config.audit_dir))
        await offline.dnc_add("0611111111", "asked")
        await offline.dnc_remove("0622222222", "by mistake")
        await offline.withdraw_consent("0633333333", "ACME")
        await offline.aclose()
        await offline.store.close()

        store = Store.from_settings(config.redis)
        service = Service(config, store, Journal(config.audit_dir), clock=lambda: MONDAY)
        await service.start()  # what the journal holds and Redis never took
        await service.dnc_add("0644444444", "asked")
        await service.dnc_remove("0644444444", "by mistake")
        await service.withdraw_consent("0655555555", "ACME")
        verdict = await service.decide(CallRequest("0611111111", "demo-press"), now=MONDAY)
        assert verdict.decision.reason is Reason.INTERNAL_DNC
        assert len(service.pending) == 0
        await service.aclose()
        await store.close()


async def test_consents_and_contracts_load_and_read_as_their_users() -> None:
    """An import as the CLI's user (no CONFIG: Redis's default listpack limits), a bucket
    split past them and a value sent to the overflow hash; read back as the service's."""
    with running_redis(acl=True) as server:
        cli_url = server.url.replace(f"//{SERVICE_USER}:", "//dialguard-cli:")
        operator = Store.from_url(cli_url, "dialguard:", 5000)
        service = Store.from_url(server.url, "dialguard:", 5000)
        given = MONDAY - timedelta(days=3)
        rows = [
            ConsentRow(normalise(f"06123450{i:02d}"), "ACME", given, None, f"p{i}")
            for i in range(100)
        ]
        rows += [
            ConsentRow(normalise(f"06123450{i:02d}"), "OTHER", given, None, "x" * (60 + i))
            for i in range(60)
        ]
        contract = Contract("K-1", Sector.CPF, date(2025, 1, 1), None)
        try:
            # 100 consents in one bucket, then 60 more: it splits as it merges them.
            await load(operator.lists, "consent", rows[:100], "replace")
            await load(operator.lists, "consent", rows[100:], "add")
            await load(operator.lists, "contract", [ContractRow(rows[0].number, "ACME", contract)])
            assert (await operator.lists.census("consent", "1")).entries == len(rows)
            for row in rows[::9]:
                facts = await service.facts(row.number, row.principal, MONDAY, 30)
                assert facts.consent is not None and facts.consent.proof_ref == row.proof_ref
            facts = await service.facts(rows[0].number, "ACME", MONDAY, 30)
            assert facts.contracts == (contract,)
        finally:
            await operator.close()
            await service.close()


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, TlsFiles]]:
    files = make_tls_files(tmp_path_factory.mktemp("tls"))
    port = free_port()
    args = [
        "--tls-port", str(port), "--tls-cert-file", str(files.cert),
        "--tls-key-file", str(files.key), "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    with running_redis(args=args, acl=False):
        yield port, files


def tls_config(tmp_path: Path, port: int, ca: Path) -> Config:
    """A configuration file as an operator writes it: rediss:// and tls_ca_file."""
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    text = text.replace(
        'url = "redis://127.0.0.1:6379/0"',
        f'url = "rediss://127.0.0.1:{port}/0"\ntls_ca_file = "{ca}"',
    )
    text = text.replace('file = "policy/france.toml"', f'file = "{ROOT}/config/policy/france.toml"')
    path = tmp_path / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return replace(load_config(path, env={}), audit_dir=tmp_path / "audit", node="test-node")


async def decide(config: Config) -> tuple[Verdict, Verdict]:
    """A do-not-call taken, then a decision on that number and one on another."""
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir), clock=lambda: MONDAY)
    try:
        await service.dnc_add("0612345678", "asked")
        listed = await service.decide(CallRequest("0612345678", "demo-press"), now=MONDAY)
        other = await service.decide(CallRequest("0698765432", "demo-press"), now=MONDAY)
        return listed, other
    finally:
        await service.aclose()
        await store.close()


async def test_a_decision_goes_through_tls_with_the_configured_ca(
    tls_redis: tuple[int, TlsFiles], tmp_path: Path
) -> None:
    port, files = tls_redis
    config = tls_config(tmp_path, port, files.ca)
    assert config.redis.tls and config.redis.tls_ca_file == files.ca
    listed, other = await decide(config)
    assert listed.decision.reason is Reason.INTERNAL_DNC and not listed.decision.degraded
    assert other.decision.reason is Reason.PRESS and not other.decision.degraded


async def test_a_wrong_ca_gives_the_fail_mode(
    tls_redis: tuple[int, TlsFiles], tmp_path: Path
) -> None:
    port, files = tls_redis
    listed, other = await decide(tls_config(tmp_path, port, files.other_ca))
    assert other.decision.reason is Reason.STORE_UNAVAILABLE  # demo-press fails closed
    assert "certificate verify failed" in (other.decision.degraded or "")
    # The do-not-call taken meanwhile waits in the journal, and is enforced all the same.
    assert listed.decision.reason is Reason.INTERNAL_DNC and listed.decision.degraded


def test_a_wrong_ca_is_one_line_from_the_cli(
    tls_redis: tuple[int, TlsFiles], tmp_path: Path
) -> None:
    port, files = tls_redis
    config = tls_config(tmp_path, port, files.other_ca)
    run = run_dialguard(
        ["check", "0612345678", "--campaign", "demo-press"],
        {"DIALGUARD_CONFIG": str(config.path), "COLUMNS": "200"},
    )
    assert run.code == 2 and "Traceback" not in run.err, run
    (line,) = run.err.splitlines()
    assert "certificate verify failed" in line, line
