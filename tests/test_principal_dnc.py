"""A principal's own do-not-call (a VICIdial campaign list, docs/vicidial.md): it denies
that principal's campaigns and no other's, the company's list still answers first, it
goes through the journal like every live change (pending, late, rebuilt)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from dialguard import snapshot
from dialguard.audit import Journal
from dialguard.changes import Change, ChangeKind
from dialguard.model import CallRequest, Reason
from dialguard.rebuild import rebuild
from dialguard.service import Service
from dialguard.store import Store
from tests.redis_server import RedisServer
from tests.test_service import MONDAY, make_config

NUMBER = "0612345678"
KEY = "33612345678"


@pytest.fixture
async def service(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Service]:
    config = make_config(clean_redis.url, tmp_path / "audit")
    other = replace(config.campaigns["demo-survey"], name="other-survey", principal="OTHER")
    config = replace(config, campaigns={**config.campaigns, "other-survey": other})
    store = Store.from_settings(config.redis)
    yield Service(config, store, Journal(config.audit_dir), clock=lambda: MONDAY)
    await store.close()


async def reason(service: Service, campaign: str) -> Reason:
    return (await service.decide(CallRequest(NUMBER, campaign), now=MONDAY)).decision.reason


async def test_it_denies_the_principals_campaigns_and_no_others(service: Service) -> None:
    _, _, applied = await service.dnc_add(
        NUMBER, "VICIdial campaign SALES1 DNC list", principal="ACME", adapter="vicidial"
    )
    assert applied
    acme = await service.decide(CallRequest(NUMBER, "demo-survey"), now=MONDAY)
    assert acme.decision.reason is Reason.INTERNAL_DNC
    assert acme.decision.evidence["dnc"]["reason"] == "VICIdial campaign SALES1 DNC list"
    assert acme.decision.evidence["dnc"]["principal_only"] is True
    (rule,) = [r for r in acme.decision.rules if r.rule == "internal_dnc"]
    assert rule.detail == "on ACME's own do-not-call list (VICIdial campaign SALES1 DNC list)"
    # The record's facts snapshot keeps it: a replay reads the same entry back.
    facts, _ = snapshot.decode(
        snapshot.encode(acme.decision, service.campaign("demo-survey"), False)
    )
    assert acme.decision.facts is not None and facts.dnc == acme.decision.facts.dnc
    assert facts.dnc is not None and facts.dnc.principal_only
    assert await reason(service, "other-survey") is Reason.NON_COMMERCIAL

    # The company's list answers for everyone, and first.
    await service.dnc_add(NUMBER, "asked by letter")
    assert await reason(service, "other-survey") is Reason.INTERNAL_DNC
    # Taking the principal's entry off leaves the company's; and the other way round.
    _, _, removed = await service.dnc_remove(NUMBER, "deleted in VICIdial", principal="ACME")
    assert removed is True
    assert await reason(service, "demo-survey") is Reason.INTERNAL_DNC
    await service.dnc_add(NUMBER, "again", principal="ACME")
    _, _, removed = await service.dnc_remove(NUMBER, "mistake")
    assert removed is True
    assert await reason(service, "demo-survey") is Reason.INTERNAL_DNC
    assert await reason(service, "other-survey") is Reason.NON_COMMERCIAL


async def test_a_removal_applied_late_never_undoes_a_later_entry(service: Service) -> None:
    at = int(MONDAY.timestamp() * 1000)
    later = Change("add-2", at + 1000, ChangeKind.DNC_ADD, KEY, "ACME", why="again")
    earlier = Change("rm-1", at, ChangeKind.DNC_REMOVE, KEY, "ACME", why="deleted")
    assert await service.store.apply(later)
    assert not await service.store.apply(earlier)
    assert await reason(service, "demo-survey") is Reason.INTERNAL_DNC
    assert not await service.store.apply(later)  # applied again: nothing changes


async def test_one_waiting_for_redis_counts_for_its_principal_only(service: Service) -> None:
    at = int(MONDAY.timestamp() * 1000)
    service.pending.queue([Change("p1", at, ChangeKind.DNC_ADD, KEY, "ACME", why="x")])
    assert await reason(service, "demo-survey") is Reason.INTERNAL_DNC
    assert await reason(service, "other-survey") is Reason.NON_COMMERCIAL


async def test_a_rebuild_from_the_journal_brings_it_back(
    service: Service, clean_redis: RedisServer
) -> None:
    await service.dnc_add(NUMBER, "SALES1", MONDAY - timedelta(days=2), principal="ACME")
    await service.dnc_add("0698765432", "SALES1", MONDAY - timedelta(days=1), principal="ACME")
    await service.dnc_remove("0698765432", "deleted", MONDAY, principal="ACME")
    client = aioredis.Redis.from_url(clean_redis.admin_url)
    await client.flushall()
    await client.aclose()
    assert await reason(service, "demo-survey") is Reason.NON_COMMERCIAL
    rebuilt = await rebuild(service.store, service.config.audit_dir, ZoneInfo("Europe/Paris"))
    assert rebuilt.changes == 3
    assert await reason(service, "demo-survey") is Reason.INTERNAL_DNC
    assert await reason(service, "other-survey") is Reason.NON_COMMERCIAL
    gone = await service.decide(CallRequest("0698765432", "demo-survey"), now=MONDAY)
    assert gone.decision.reason is Reason.NON_COMMERCIAL
