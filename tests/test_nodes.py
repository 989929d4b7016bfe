"""Several nodes on one Redis: two `dialguard serve` processes (two Asterisk boxes, each
with its own name and journal) share the 30-day cap and the live lists."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dialguard.numbers import normalise
from tests.agi.asterisk_peer import run_session
from tests.redis_server import RedisServer
from tests.test_reload import HOST, Site, make_site, serving, started

NUMBER = "06 12 34 56 78"


def node(directory: Path, name: str) -> Site:
    directory.mkdir()
    site = make_site(directory)
    site.edit_config('node = "reload-test"', f'node = "{name}"')
    # Every day, every hour, no holiday: the processes run on the real clock, and press
    # calls count against the cap wherever they are allowed.
    site.edit_policy(
        'days = ["mon", "tue", "wed", "thu", "fri"]',
        'days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]',
    )
    site.edit_policy(
        'windows = [["10:00", "13:00"], ["14:00", "20:00"]]', 'windows = [["00:00", "23:59:59"]]'
    )
    site.edit_policy("national = true", "national = false")
    site.edit_policy("local = true", "local = false")
    site.edit_config(
        '[campaigns.demo-survey]\nprincipal = "ACME"\npurpose = "non_commercial"',
        '[campaigns.demo-press]\nprincipal = "ACME"\npurpose = "press"',
    )
    return site


async def test_two_nodes_share_the_cap_twenty_calls_to_one_number_exactly_four_pass(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    east, west = node(tmp_path / "east", "node-east"), node(tmp_path / "west", "node-west")
    with serving(east, clean_redis.url) as on_east, serving(west, clean_redis.url) as on_west:
        await asyncio.gather(started(on_east), started(on_west))
        sessions = [
            run_session(HOST, (east if i % 2 else west).port, args=(NUMBER, "demo-press"))
            for i in range(20)
        ]
        answers = [r.variables for r in await asyncio.gather(*sessions)]
        assert sum(a["DIALGUARD_RESULT"] == "ALLOW" for a in answers) == 4
        assert {a["DIALGUARD_REASON"] for a in answers} == {"PRESS", "FREQUENCY_CAP"}
        east_records = east.records("decision")
        west_records = west.records("decision")
        assert {r["node"] for r in east_records} == {"node-east"}
        assert {r["node"] for r in west_records} == {"node-west"}
        assert len(east_records) == len(west_records) == 10  # each node's own journal
        assert sum(r["result"] == "ALLOW" for r in east_records + west_records) == 4

        # A do-not-call taken during a call on one node holds on the other at once.
        other = "07 11 22 33 44"
        said = await run_session(
            HOST, east.port, script="outcome", args=(other, "do-not-call", "demo-press")
        )
        assert said.variables["DIALGUARD_OUTCOME"] == "RECORDED"
        elsewhere = await run_session(HOST, west.port, args=(other, "demo-press"))
        assert elsewhere.variables["DIALGUARD_REASON"] == "INTERNAL_DNC"
        assert elsewhere.variables["DIALGUARD_NUMBER"] == normalise(other).e164
