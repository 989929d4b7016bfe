"""Registry check ages (pure) and how an operator is told: `lists status`, the service log."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta

import pytest
import redis.asyncio as aioredis
import structlog

from dialguard import serve
from dialguard.config import load_config
from dialguard.freshness import SOON_DAYS, registry_sets, warnings
from dialguard.import_files import OptoutRow
from dialguard.store import Store
from dialguard.store.loading import load
from tests.redis_server import RedisServer
from tests.waiting import wait_until

TODAY = date(2026, 12, 1)


def result_set(
    version: str, checked_on: date, clear: int = 10, listed: int = 1
) -> dict[str, object]:
    return {
        "version": version,
        "checked_on": checked_on.isoformat(),
        "ref": f"ref-{version}",
        "clear": clear,
        "listed": listed,
    }


@pytest.mark.parametrize(
    ("age", "days_left", "stale", "soon"),
    [
        (0, 30, False, False),  # checked today
        (22, 8, False, False),
        (23, 7, False, True),  # a week left: the operator is told
        (29, 1, False, True),  # the last day it counts
        (30, 0, True, False),  # the policy: 0 <= age < 30, so day 30 is unverified
        (400, -370, True, False),
        (-1, 31, True, False),  # dated after today: a wrong date never counts
    ],
)
def test_age_days_left_and_state(age: int, days_left: int, stale: bool, soon: bool) -> None:
    (found,) = registry_sets([result_set("7", TODAY - timedelta(days=age))], TODAY, 30)
    assert (found.age_days, found.days_left, found.stale, found.stale_soon) == (
        age,
        days_left,
        stale,
        soon,
    )


def test_sets_come_newest_check_first_and_warnings_name_the_ones_that_matter() -> None:
    sets = registry_sets(
        [
            result_set("3", TODAY - timedelta(days=40)),
            result_set("9", TODAY - timedelta(days=2)),
            result_set("5", TODAY - timedelta(days=25)),
            result_set("6", TODAY - timedelta(days=35), clear=0),  # only listings: nothing ages
        ],
        TODAY,
        30,
    )
    assert [s.version for s in sets] == ["9", "5", "6", "3"]
    events = warnings(sets)
    assert [(event, fields["version"]) for event, fields in events] == [
        ("registry_check_ageing", "5"),
        ("registry_check_stale", "3"),
    ]
    assert events[0][1]["days_left"] == 5 and events[0][1]["clear_numbers"] == 10
    assert SOON_DAYS == 7


async def test_the_service_logs_checks_going_stale(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    store = Store(redis_client, "dialguard:")
    today = datetime.now(UTC).date()
    rows = [OptoutRow("33612345678", False, ""), OptoutRow("33612345679", True, "")]
    await load(store.lists, "bloctel", rows, "add", checked_on=today - timedelta(days=26), ref="W")
    await load(store.lists, "bloctel", rows, "add", checked_on=today - timedelta(days=31), ref="X")
    config = load_config(env={"DIALGUARD_REDIS_URL": redis_server.url})
    saved = structlog.get_config()
    # Another test may have run the CLI in this process, which filters out warnings.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            task = asyncio.get_running_loop().create_task(
                serve.watch_freshness(store, lambda: config)
            )
            try:
                await wait_until(lambda: any(log["event"] == "registry_age" for log in logs), 5)
            finally:
                task.cancel()
    finally:
        structlog.configure(**saved)
    events = {log["event"]: log for log in logs}
    assert events["registry_check_ageing"]["days_left"] in (3, 4, 5)  # Paris vs UTC date
    assert events["registry_check_ageing"]["clear_numbers"] == 1
    assert events["registry_check_stale"]["checked_on"] == (today - timedelta(days=31)).isoformat()
    assert events["registry_age"]["sets"] == 2
