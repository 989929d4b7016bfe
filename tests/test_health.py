"""/healthz, /readyz and the service's own series on /metrics: real FastAGI sessions (the
Asterisk peer of tests/agi) against a real server, a real Redis, real HTTP requests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dialguard.config import MetricsSettings
from dialguard.metrics import start_metrics
from dialguard.telemetry import Telemetry
from tests.agi.test_server import (
    HOST,
    MONDAY,
    NUMBER_RAW,
    REDIS_DOWN,
    Agi,
    agi_server,
    assert_closed_silently,
    assert_decision,
    dialguard_serve,
    load_consent,
    serve_sessions,
    write_serve_config,
)
from tests.redis_server import RedisServer, free_port, running_redis
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One /metrics page: samples by (name, sorted labels), and every name it declares."""

    samples: dict[tuple[str, Labels], float]
    names: set[str]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def total(self, name: str, **labels: str) -> float:
        """The sum over the samples of `name` carrying at least `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= set(ls))


@dataclass
class Http:
    base: str

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def ready(self) -> tuple[int, dict[str, Any]]:
        status, body = await self.get("/readyz")
        assert isinstance(body, dict) and set(body) == {"ready", "checks"}, body
        assert body["ready"] is (status == 200)
        assert set(body["checks"]) == {"redis", "journal", "pending", "policy"}
        for check in body["checks"].values():
            # A failed check says why, in one line; a passing one has no error.
            assert ("error" in check) is (not check["ok"]), check
            assert "\n" not in check.get("error", "")
        return status, body["checks"]

    async def metrics(self) -> Scrape:
        status, text = await self.get("/metrics")
        assert status == 200, text
        return parse(text)


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, Labels], float] = {}
    names: set[str] = set(re.findall(r"(?m)^# TYPE (\S+) ", text))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            names.add(sample.name)
    return Scrape(samples, names)


@asynccontextmanager
async def served(
    url: str, audit_dir: Path, *, max_pending_s: int = 60, **options: Any
) -> AsyncIterator[tuple[Agi, Http]]:
    """The FastAGI harness with its counters, and the [metrics] endpoint over it."""
    async with agi_server(url, audit_dir, telemetry=Telemetry(), **options) as agi:
        settings = MetricsSettings("127.0.0.1", free_port(), max_pending_s)
        sessions = {"fastagi": lambda: agi.server.sessions}
        runner = await start_metrics(agi.service, settings, sessions=sessions)
        try:
            yield agi, Http(f"http://127.0.0.1:{settings.port}")
        finally:
            await runner.cleanup()


AgiHttp = tuple[Agi, Http]


@pytest.fixture
async def agi_with_http(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[AgiHttp]:
    async with served(clean_redis.url, tmp_path / "audit") as pair:
        yield pair


# --- /healthz and /readyz -----------------------------------------------------------------


async def test_healthz_and_readyz_when_all_is_well(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with served(clean_redis.url, tmp_path / "audit") as (agi, http):
        assert await http.get("/healthz") == (200, {"status": "ok"})
        status, checks = await http.ready()
        assert status == 200
        assert all(check["ok"] for check in checks.values())
        policy = agi.service.config.policy
        assert checks["policy"] == {"ok": True, "name": policy.name, "hash": policy.hash}
        assert checks["pending"] == {"ok": True, "changes": 0, "oldest_age_s": 0.0}
        assert checks["journal"]["dir"] == str(tmp_path / "audit")  # not made yet: makeable
        assert checks["redis"]["latency_ms"] >= 0


async def test_not_ready_when_redis_is_down(tmp_path: Path) -> None:
    async with served(REDIS_DOWN, tmp_path / "audit") as (_, http):
        assert (await http.get("/healthz"))[0] == 200  # alive all the same
        status, checks = await http.ready()
        assert status == 503
        assert not checks["redis"]["ok"]
        assert checks["redis"]["error"].startswith("Redis unavailable")
        assert all(checks[name]["ok"] for name in ("journal", "pending", "policy"))


async def test_not_ready_while_redis_is_frozen_and_ready_once_it_answers(tmp_path: Path) -> None:
    with running_redis() as redis:
        async with served(redis.url, tmp_path / "audit") as (_, http):
            redis.pause()
            try:
                status, checks = await http.ready()
            finally:
                redis.resume()
            assert status == 503
            assert checks["redis"] == {"ok": False, "error": "no answer within 1000 ms"}
            assert (await http.ready())[0] == 200


async def test_not_ready_when_the_journal_cannot_be_written(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "journal"
    blocker.write_text("")  # a file where the journal's directory should go (root or not)
    async with served(clean_redis.url, blocker / "audit") as (agi, http):
        status, checks = await http.ready()
        assert status == 503 and checks["journal"]["error"] == f"{blocker}: not a directory"
        assert all(checks[name]["ok"] for name in ("redis", "pending", "policy"))

        # A call meanwhile gets no answer, and its append's failure is remembered...
        assert_closed_silently(await agi.call(NUMBER_RAW, "demo-press"))
        status, checks = await http.ready()
        assert status == 503 and checks["journal"]["error"] == f"{blocker}: not a directory"
        # ... but a node found not ready gets no calls to clear it: once the directory can
        # be written again (a file written and flushed there), it is ready without one.
        blocker.unlink()
        assert (await http.ready())[0] == 200
        assert not list((blocker / "audit").glob(".ready-probe*"))
        assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")
        assert (await http.ready())[0] == 200
        scrape = await http.metrics()
        assert scrape.value("dialguard_journal_errors_total") == 1
        await agi.settled()


async def test_not_ready_when_a_change_waits_for_redis_too_long(tmp_path: Path) -> None:
    async with served(REDIS_DOWN, tmp_path / "audit", max_pending_s=60) as (agi, http):
        service = agi.service
        await service.dnc_add("0611111111", "asked", MONDAY - timedelta(seconds=30))
        _, checks = await http.ready()
        assert checks["pending"] == {"ok": True, "changes": 1, "oldest_age_s": 30.0}

        await service.dnc_add("0622222222", "asked", MONDAY - timedelta(seconds=125))
        status, checks = await http.ready()
        assert status == 503
        assert checks["pending"]["error"] == (
            "2 journalled change(s) not taken by Redis, the oldest 125 s ago (more than 60 s)"
        )
        scrape = await http.metrics()
        assert scrape.value("dialguard_pending_changes") == 2
        assert scrape.value("dialguard_pending_oldest_age_seconds") == 125
        # The second waits behind the first without asking Redis (journal order).
        assert scrape.value("dialguard_redis_errors_total", op="apply") == 1


# --- /metrics: what the service counted ------------------------------------------------------


async def test_metrics_count_fastagi_decisions(clean_redis: RedisServer, tmp_path: Path) -> None:
    async with served(clean_redis.url, tmp_path / "audit") as (agi, http):
        before = await http.metrics()
        assert before.value("dialguard_decision_latency_seconds_count") == 0
        assert before.value("dialguard_sessions_in_flight", adapter="fastagi") == 0

        await load_consent(agi.admin)
        calls = [
            (NUMBER_RAW, "demo-prospecting", "ALLOW", "CONSENT"),
            (NUMBER_RAW, "demo-prospecting", "ALLOW", "CONSENT"),
            ("0611111111", "demo-prospecting", "DENY", "NO_CONSENT"),
            ("0611111111", "demo-press", "ALLOW", "PRESS"),
            ("0611111111", "no-such-campaign", "DENY", "UNKNOWN_CAMPAIGN"),
        ]
        results = await asyncio.gather(*(agi.call(n, c) for n, c, _, _ in calls))
        for (_, _, result, reason), session in zip(calls, results, strict=True):
            assert session.variables["DIALGUARD_RESULT"] == result
            assert session.variables["DIALGUARD_REASON"] == reason
        await agi.settled()

        scrape = await http.metrics()
        decided = {
            dict(labels)["reason"]: (dict(labels)["result"], dict(labels)["campaign"], value)
            for (name, labels), value in scrape.samples.items()
            if name == "dialguard_decisions_total"
        }
        assert decided == {
            "CONSENT": ("ALLOW", "demo-prospecting", 2),
            "NO_CONSENT": ("DENY", "demo-prospecting", 1),
            "PRESS": ("ALLOW", "demo-press", 1),
            "UNKNOWN_CAMPAIGN": ("DENY", "_unknown", 1),  # not one series per typo
        }
        assert scrape.value("dialguard_decision_latency_seconds_count") == 5
        assert 0 < scrape.value("dialguard_decision_latency_seconds_sum") < 5
        assert scrape.value("dialguard_decision_latency_seconds_bucket", le="+Inf") == 5
        # Every decision is in one durable batch; each batch had its fdatasync.
        assert scrape.value("dialguard_journal_batch_records_sum") == 5
        batches = scrape.value("dialguard_journal_batch_records_count")
        assert 1 <= batches <= 5
        assert scrape.value("dialguard_journal_fsync_seconds_count") == batches
        assert scrape.value("dialguard_journal_errors_total") == 0
        # Four decisions read facts, batched together or not.
        facts_calls = scrape.value("dialguard_redis_call_latency_seconds_count", op="facts")
        assert 1 <= facts_calls <= 4
        assert scrape.total("dialguard_redis_errors_total") == 0
        assert scrape.total("dialguard_degraded_decisions_total") == 0
        policy = agi.service.config.policy
        info = {"node": "test-node", "worker": "0", "policy": policy.name}
        assert scrape.total("dialguard_build_info", **info, policy_hash=policy.hash) == 1


async def test_the_sessions_gauge_counts_a_session_in_flight(agi_with_http: AgiHttp) -> None:
    agi, http = agi_with_http
    _, writer = await asyncio.open_connection(HOST, agi.port)  # connected, no block sent yet
    try:
        await wait_until(lambda: agi.server.sessions == 1)
        scrape = await http.metrics()
        assert scrape.value("dialguard_sessions_in_flight", adapter="fastagi") == 1
    finally:
        writer.close()
    await agi.settled()
    scrape = await http.metrics()
    assert scrape.value("dialguard_sessions_in_flight", adapter="fastagi") == 0


async def test_metrics_count_degraded_decisions_and_redis_errors(tmp_path: Path) -> None:
    async with served(REDIS_DOWN, tmp_path / "audit") as (agi, http):
        assert_decision(
            agi, await agi.call(NUMBER_RAW, "demo-prospecting"), "DENY", "STORE_UNAVAILABLE"
        )
        scrape = await http.metrics()
        assert scrape.value("dialguard_degraded_decisions_total", cause="STORE_UNAVAILABLE") == 1
        assert scrape.value("dialguard_degraded_decisions_total", cause="DEADLINE") == 0
        assert scrape.value("dialguard_redis_errors_total", op="facts") == 1
        assert scrape.value("dialguard_redis_call_latency_seconds_count", op="facts") == 1
        denied = {"result": "DENY", "reason": "STORE_UNAVAILABLE", "campaign": "demo-prospecting"}
        assert scrape.value("dialguard_decisions_total", **denied) == 1
        assert scrape.value("dialguard_redis_up") == 0
        await agi.settled()


async def test_a_decision_past_its_deadline_counts_as_degraded(tmp_path: Path) -> None:
    with running_redis() as redis:
        async with served(redis.url, tmp_path / "audit", deadline_ms=200) as (agi, http):
            redis.pause()
            try:
                result = await agi.call(NUMBER_RAW, "demo-prospecting")
            finally:
                redis.resume()
            assert_decision(agi, result, "DENY", "DEADLINE")
            scrape = await http.metrics()
            assert scrape.value("dialguard_degraded_decisions_total", cause="DEADLINE") == 1
            assert scrape.value("dialguard_decision_latency_seconds_bucket", le="0.1") == 0
            assert scrape.value("dialguard_decision_latency_seconds_bucket", le="1.0") == 1
            await agi.settled()
            await agi.drained()


# --- the real command: one endpoint per worker -------------------------------------------------


def two_free_ports() -> int:
    """A port p with p + 1 free too (worker 1 serves on p + 1)."""
    for _ in range(50):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


async def test_each_worker_serves_its_own_counters_on_its_port(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    port = two_free_ports()
    extra = f'[metrics]\nhost = "127.0.0.1"\nport = {port}\n'
    async with dialguard_serve(tmp_path, clean_redis.url, 2, extra) as serving:
        await serve_sessions(serving, 20)
        scrapes = []
        for worker in (0, 1):
            http = Http(f"http://127.0.0.1:{port + worker}")
            assert await http.get("/healthz") == (200, {"status": "ok"})
            assert (await http.ready())[0] == 200
            scrape = await http.metrics()
            assert scrape.total("dialguard_build_info", worker=str(worker)) == 1
            scrapes.append(scrape)
        decided = {"result": "ALLOW", "reason": "NON_COMMERCIAL", "campaign": "demo-survey"}
        # SO_REUSEPORT spreads the sessions; each worker counts its own, none twice.
        counts = [s.total("dialguard_decisions_total", **decided) for s in scrapes]
        assert sum(counts) == 20
        assert await asyncio.to_thread(serving.stop) == 0
    assert len(serving.events("metrics_listening")) == 2


def test_workers_past_the_last_port_are_one_line(tmp_path: Path) -> None:
    config = write_serve_config(tmp_path, free_port(), "[metrics]\nport = 65534\n")
    run = subprocess.run(
        [str(Path(sys.executable).parent / "dialguard"), "serve", "--workers", "3"],
        env={**os.environ, "DIALGUARD_CONFIG": str(config), "DIALGUARD_REDIS_URL": REDIS_DOWN},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 1
    assert run.stderr == (
        f"dialguard: {config}: metrics.port: 65534: worker 2 would serve on 65536, not a TCP port\n"
    )


# --- the dashboard -------------------------------------------------------------------------------

# Series the dashboard must show (docs/metrics.md says what each means).
SHOWN = {
    "dialguard_decisions_total",
    "dialguard_decision_latency_seconds_bucket",
    "dialguard_degraded_decisions_total",
    "dialguard_redis_errors_total",
    "dialguard_redis_call_latency_seconds_bucket",
    "dialguard_journal_fsync_seconds_bucket",
    "dialguard_journal_batch_records_sum",
    "dialguard_journal_errors_total",
    "dialguard_pending_changes",
    "dialguard_pending_oldest_age_seconds",
    "dialguard_sessions_in_flight",
    "dialguard_registry_check_days_left",
    "dialguard_list_age_seconds",
    "dialguard_redis_up",
}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    exprs = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        exprs += [target["expr"] for target in panel["targets"]]
    return exprs


async def test_the_dashboard_names_only_series_the_endpoint_serves(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with served(clean_redis.url, tmp_path / "audit") as (agi, http):
        assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")
        served_names = (await http.metrics()).names
        await agi.settled()
    named = {name for expr in dashboard_exprs() for name in re.findall(r"\bdialguard_\w+", expr)}
    assert named - served_names == set()
    assert SHOWN - named == set()


def test_the_dashboard_check_sees_a_wrong_name() -> None:
    scrape = parse("# TYPE dialguard_redis_up gauge\ndialguard_redis_up 1.0\n")
    expr = "max(dialguard_redis_upp)"
    assert set(re.findall(r"\bdialguard_\w+", expr)) - scrape.names == {"dialguard_redis_upp"}
