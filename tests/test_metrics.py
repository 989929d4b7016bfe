"""GET /metrics: the age of the lists in force, from a real Redis over real HTTP.

tests/test_health.py covers /healthz, /readyz and the series the service counts."""

from __future__ import annotations

import json
import math
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from dialguard.config import Config, ConfigError, MetricsSettings, load_config
from dialguard.import_files import DncRow, OptoutRow
from dialguard.metrics import start_metrics
from dialguard.service import Service
from dialguard.store import Store
from dialguard.store.loading import load
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def config(redis_server: RedisServer) -> Config:
    loaded = load_config(env={"DIALGUARD_REDIS_URL": redis_server.url})
    return replace(loaded, metrics=MetricsSettings("127.0.0.1", free_port()))


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Scraper:
    url: str
    store: Store

    async def get(self) -> Samples:
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
async def scraper(config: Config, redis_client: aioredis.Redis) -> AsyncIterator[Scraper]:
    store = Store(redis_client, "dialguard:")
    assert config.metrics is not None
    runner = await start_metrics(Service(config, store, None), config.metrics)
    yield Scraper(f"http://127.0.0.1:{config.metrics.port}/metrics", store)
    await runner.cleanup()


async def test_metrics_show_the_age_of_each_check_and_list(scraper: Scraper) -> None:
    store = scraper.store
    before = await scraper.get()
    assert before[("dialguard_redis_up", ())] == 1
    assert math.isnan(before[("dialguard_registry_newest_check_age_days", ())])

    today = datetime.now(UTC).date()
    rows = [OptoutRow("33612345678", False, ""), OptoutRow("33612345679", True, "")]
    await load(store.lists, "bloctel", rows, "add", checked_on=today - timedelta(days=25))
    await load(store.lists, "bloctel", rows[:1], "add", checked_on=today - timedelta(days=2))
    await load(store.lists, "dnc", [DncRow("33611111111", "")], "replace")

    after = await scraper.get()  # an import shows at the next scrape
    assert after[("dialguard_registry_newest_check_age_days", ())] in (1, 2, 3)
    older = str(today - timedelta(days=25))
    (left,) = [v for (name, labels), v in after.items() if ("checked_on", older) in labels]
    assert left in (4, 5, 6)  # 30 days minus 25, whichever side of midnight Paris is
    assert after[("dialguard_registry_clear_numbers_stale_soon", ())] == 1
    assert 0 <= after[("dialguard_list_age_seconds", (("list", "dnc"),))] < 60
    assert ("dialguard_list_age_seconds", (("list", "consent"),)) not in after


async def test_redis_down_reads_as_down_not_as_an_error(
    config: Config, redis_server: RedisServer
) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    assert config.metrics is not None
    service = Service(config, Store(client, "dialguard:"), None)
    runner = await start_metrics(service, config.metrics)
    try:
        url = f"http://127.0.0.1:{config.metrics.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        assert response.status == 200 and "dialguard_redis_up 0.0" in text
    finally:
        await runner.cleanup()
        await client.aclose()


async def test_a_taken_port_is_an_oserror(config: Config, redis_client: aioredis.Redis) -> None:
    assert config.metrics is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config.metrics.port))
        taken.listen()
        with pytest.raises(OSError):
            service = Service(config, Store(redis_client, "dialguard:"), None)
            await start_metrics(service, config.metrics)


def shipped_without_metrics(tmp_path: Path) -> str:
    shipped = (REPO / "config" / "dialguard.toml").read_text(encoding="utf-8")
    policy = REPO / "config" / "policy" / "france.toml"
    text = shipped.replace('"policy/france.toml"', json.dumps(str(policy)))
    # The section runs from its header to the next blank line.
    without, found = re.subn(r"(?m)^\[metrics\]\n(?:.+\n)*", "", text)
    assert found == 1, "the shipped configuration serves health and metrics"
    return without


def test_the_shipped_configuration_serves_health_on_loopback() -> None:
    config = load_config(REPO / "config" / "dialguard.toml", env={})
    assert config.metrics == MetricsSettings("127.0.0.1", 9573, 60)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("", None),  # no section: no endpoint
        ("[metrics]\n", None),  # defaults: 127.0.0.1:9573
        ("[metrics]\nready_max_pending_s = 300\n", None),
        ("[metrics]\nport = 70000\n", "metrics.port: 70000 is not a TCP port"),
        ("[metrics]\nprot = 9573\n", "metrics.prot: unknown key"),
        ("[metrics]\nready_max_pending_s = 0\n", "metrics.ready_max_pending_s: 0 must be"),
    ],
)
def test_the_metrics_section(tmp_path: Path, section: str, message: str | None) -> None:
    path = tmp_path / "dialguard.toml"
    path.write_text(shipped_without_metrics(tmp_path) + section, encoding="utf-8")
    if message is not None:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, env={})
        return
    metrics = load_config(path, env={}).metrics
    if not section:
        assert metrics is None
    else:
        assert metrics is not None and (metrics.host, metrics.port) == ("127.0.0.1", 9573)
        assert metrics.ready_max_pending_s == (300 if "300" in section else 60)
