"""The decision path against a real Redis: facts, atomic count, fail modes, audit records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from dialguard.audit import Journal
from dialguard.config import Config, load_config
from dialguard.import_files import ConsentRow, ContractRow, DncRow, OptoutRow
from dialguard.model import CallRequest, Contract, DncEntry, FailMode, Reason, Result, Sector
from dialguard.numbers import normalise
from dialguard.service import OutcomeKind, Service
from dialguard.store import Store
from dialguard.store.loading import load
from tests.journal import audit_records
from tests.redis_server import RedisServer, running_redis
from tests.waiting import wait_until

ROOT = Path(__file__).parent.parent
PARIS = ZoneInfo("Europe/Paris")
MONDAY = datetime(2026, 11, 30, 11, 0, tzinfo=PARIS)
NUMBER = normalise("0612345678")


def make_config(url: str, audit_dir: Path) -> Config:
    config = load_config(ROOT / "config" / "dialguard.toml", env={"DIALGUARD_REDIS_URL": url})
    return replace(config, audit_dir=audit_dir, node="test-node")


@pytest.fixture
async def service(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Service]:
    config = make_config(clean_redis.url, tmp_path / "audit")
    store = Store.from_settings(config.redis)
    yield Service(config, store, Journal(config.audit_dir))
    await store.close()


async def test_fifty_concurrent_calls_to_one_number_exactly_four_pass(service: Service) -> None:
    request = CallRequest("06 12 34 56 78", "demo-press", adapter="test")
    verdicts = await asyncio.gather(
        *(service.decide(request, now=MONDAY, record=True) for _ in range(50))
    )
    allowed = [v for v in verdicts if v.decision.allowed]
    assert len(allowed) == 4
    assert {v.decision.reason for v in verdicts if not v.decision.allowed} == {Reason.FREQUENCY_CAP}
    assert len({v.id for v in verdicts}) == 50
    records = audit_records(service.config.audit_dir)
    assert sorted(r["id"] for r in records) == sorted(v.id for v in verdicts)
    assert sum(r["result"] == "ALLOW" for r in records) == 4
    # The next call, even a day later, meets the cap through the facts read alone.
    later = await service.decide(request, now=MONDAY + timedelta(days=1), record=True)
    assert later.decision.reason is Reason.FREQUENCY_CAP


async def test_the_rolling_window_ends_after_thirty_days(service: Service) -> None:
    store = service.store
    for i in range(4):
        await store.count_attempt(NUMBER, "ACME", MONDAY, 4, 30, f"a{i}")
    last_inside = MONDAY + timedelta(days=30) - timedelta(milliseconds=1)
    assert (await store.facts(NUMBER, "ACME", last_inside, 30)).attempts_30d == 4
    assert (await store.facts(NUMBER, "ACME", MONDAY + timedelta(days=30), 30)).attempts_30d == 0
    counted, attempts = await store.count_attempt(NUMBER, "ACME", last_inside, 4, 30, "b")
    assert (counted, attempts) == (False, 4)
    counted, attempts = await store.count_attempt(
        NUMBER, "ACME", MONDAY + timedelta(days=30), 4, 30, "c"
    )
    assert (counted, attempts) == (True, 1)
    # The cap is per principal: another professional has its own four.
    assert (await store.facts(NUMBER, "OTHER", last_inside, 30)).attempts_30d == 0


async def test_check_without_record_has_no_side_effect(service: Service) -> None:
    request = CallRequest("0612345678", "demo-press")
    for _ in range(6):
        verdict = await service.decide(request, now=MONDAY)
        assert verdict.decision.allowed
    assert audit_records(service.config.audit_dir) == []


async def test_every_fact_round_trips_through_redis(service: Service) -> None:
    store = service.store
    row = ConsentRow(NUMBER, "ACME", datetime(2026, 10, 1, tzinfo=PARIS), None, "crm:42")
    await load(store.lists, "consent", [row], "add")
    contract = Contract("K-7", Sector.ENERGY_RENOVATION, date(2026, 1, 1), None)
    await load(store.lists, "contract", [ContractRow(NUMBER, "ACME", contract)], "add")
    optout = OptoutRow(normalise("+33612345678").key, listed=False, ref="req-1")
    result_set = await load(store.lists, "bloctel", [optout], "add", checked_on=date(2026, 11, 1))

    facts = await store.facts(NUMBER, "ACME", MONDAY, 30)
    assert facts.consent is not None and facts.consent.proof_ref == "crm:42"
    assert facts.consent.given_at == datetime(2026, 10, 1, tzinfo=PARIS)
    assert facts.consent.expires_at is None
    assert facts.contracts == (contract,)
    assert facts.optout is not None and facts.optout.checked_on == date(2026, 11, 1)
    assert not facts.optout.listed
    # The line's Identifiant is not stored: the evidence names the result set (no --ref).
    assert facts.optout.ref == f"result set {result_set.version}"
    assert facts.dnc is None and facts.refused_at is None and facts.withdrawn_at is None
    # Facts belong to one principal.
    other = await store.facts(NUMBER, "OTHER", MONDAY, 30)
    assert other.consent is None and other.contracts == ()

    energy = await service.decide(CallRequest("0612345678", "demo-energy"), now=MONDAY)
    assert energy.decision.reason is Reason.CONTRACT
    consent = await service.decide(CallRequest("+33 6 12 34 56 78", "demo-prospecting"), now=MONDAY)
    assert consent.decision.reason is Reason.CONSENT
    assert consent.decision.evidence["consent"]["proof_ref"] == "crm:42"


async def test_refusal_blocks_and_withdraws_and_a_crm_reload_cannot_undo_it(
    service: Service,
) -> None:
    store = service.store
    row = ConsentRow(NUMBER, "ACME", datetime(2026, 10, 1, tzinfo=PARIS), None, "crm:42")
    await load(store.lists, "consent", [row], "add")
    request = CallRequest("0612345678", "demo-prospecting")
    await service.record_outcome(request, OutcomeKind.REFUSED, now=MONDAY)
    blocked = await service.decide(request, now=MONDAY + timedelta(days=1))
    assert blocked.decision.reason is Reason.RECENT_REFUSAL
    # 61 days later the block is over, but the consent stays withdrawn...
    after = MONDAY + timedelta(days=61)
    assert (await service.decide(request, now=after)).decision.reason is Reason.CONSENT_WITHDRAWN
    # ... even after the nightly CRM export replaces the consents with the same old row.
    await load(store.lists, "consent", [row], "replace")
    assert (await service.decide(request, now=after)).decision.reason is Reason.CONSENT_WITHDRAWN
    assert [r["outcome"] for r in audit_records(service.config.audit_dir)] == ["refused"]


async def test_do_not_call_outcome_takes_effect_for_the_next_call(service: Service) -> None:
    request = CallRequest("+262 262 12 34 56", "demo-press")
    assert (await service.decide(request, now=MONDAY)).decision.allowed
    said = CallRequest("0262123456", "demo-press")
    await service.record_outcome(said, OutcomeKind.DO_NOT_CALL, now=MONDAY)
    decision = (await service.decide(request, now=MONDAY)).decision
    assert decision.reason is Reason.INTERNAL_DNC


async def test_replace_swaps_the_whole_list_and_merge_keeps_it(
    service: Service, redis_client: aioredis.Redis
) -> None:
    store = service.store
    old, new = normalise("0611111111"), normalise("0622222222")

    async def reasons() -> list[str | None]:
        found = [(await store.facts(n, "ACME", MONDAY, 30)).dnc for n in (old, new)]
        return [entry.reason if entry else None for entry in found]

    first = await load(store.lists, "dnc", [DncRow(old.key, "old")], "add")
    merged = await load(store.lists, "dnc", [DncRow(new.key, "new")], "add")
    assert merged.version == first.version  # a merge writes into the version in force
    assert (merged.changed, merged.size) == (1, 2)
    assert await reasons() == ["old", "new"]
    replaced = await load(store.lists, "dnc", [DncRow(new.key, "newer")], "replace")
    assert replaced.version != first.version
    assert (replaced.size, replaced.stale_versions) == (1, [first.version])
    assert await reasons() == [None, "newer"]
    # The old version is freed, no build is left behind, and every key carries the
    # configured prefix.
    keys = [k.decode() if isinstance(k, bytes) else k for k in await redis_client.keys("*")]
    assert keys
    assert all(k.startswith("dialguard:") for k in keys), keys
    assert not [k for k in keys if k.startswith(f"dialguard:dnc:{first.version}:")], keys
    assert await redis_client.scard(store.keys.building) == 0
    assert not await redis_client.exists(store.keys.lock("dnc"))


async def test_concurrent_readers_never_see_a_half_replaced_list(
    service: Service, redis_client: aioredis.Redis
) -> None:
    store = service.store
    first = [normalise(f"06{i:08d}") for i in range(1, 6001)]
    second = [normalise(f"07{i:08d}") for i in range(1, 6001)]
    before = await load(store.lists, "dnc", [DncRow(n.key, "a") for n in first], "replace")
    # Numbers from both lists, from the first and the last chunk the loader writes.
    sample = [*first[:3], first[2999], *first[-3:], *second[:3], second[2999], *second[-3:]]
    seen: set[tuple[bool, ...]] = set()
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            # Requests of one loop turn go out in one script call: one snapshot.
            facts = await asyncio.gather(*(store.facts(n, "ACME", MONDAY, 30) for n in sample))
            seen.add(tuple(f.dnc is not None for f in facts))
            await asyncio.sleep(0)

    task = asyncio.create_task(reader())
    after = await load(store.lists, "dnc", [DncRow(n.key, "b") for n in second], "replace")
    done.set()
    await task
    old_list, new_list = (True,) * 7 + (False,) * 7, (False,) * 7 + (True,) * 7
    assert seen and seen <= {old_list, new_list}, seen
    assert (after.size, after.stale_versions) == (6000, [before.version])
    assert (await store.facts(second[-1], "ACME", MONDAY, 30)).dnc is not None
    assert (await store.facts(first[0], "ACME", MONDAY, 30)).dnc is None
    assert not await redis_client.keys(f"dialguard:dnc:{before.version}:*")


async def test_redis_down_fails_closed_or_open_as_configured(tmp_path: Path) -> None:
    config = make_config("redis://127.0.0.1:1/0", tmp_path)
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(tmp_path))
    request = CallRequest("0612345678", "demo-prospecting")
    closed = await service.decide(request, now=MONDAY, record=True)
    assert (closed.decision.result, closed.decision.reason) == (
        Result.DENY,
        Reason.STORE_UNAVAILABLE,
    )
    open_campaign = replace(config.campaigns["demo-prospecting"], fail_mode=FailMode.OPEN)
    service.config = replace(config, campaigns={"demo-prospecting": open_campaign})
    opened = await service.decide(request, now=MONDAY, record=True)
    assert (opened.decision.result, opened.decision.reason) == (
        Result.ALLOW,
        Reason.STORE_UNAVAILABLE,
    )
    records = audit_records(service.config.audit_dir)
    assert [r["degraded"] != "" for r in records] == [True, True]
    assert [r["result"] for r in records] == ["DENY", "ALLOW"]
    await store.close()


async def test_a_frozen_redis_meets_the_deadline(tmp_path: Path) -> None:
    with running_redis() as server:
        config = make_config(server.url, tmp_path)
        store = Store.from_url(config.redis.url, config.redis.prefix, timeout_ms=5000)
        service = Service(config, store, Journal(tmp_path))
        request = CallRequest("0612345678", "demo-press")
        assert (await service.decide(request, now=MONDAY, deadline_s=0.3)).decision.allowed
        server.pause()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            verdict = await service.decide(request, now=MONDAY, deadline_s=0.1, record=True)
            elapsed = loop.time() - started
        finally:
            server.resume()
        assert verdict.decision.reason is Reason.DEADLINE
        assert not verdict.decision.allowed
        assert elapsed < 1.0
        assert audit_records(service.config.audit_dir)[-1]["reason"] == "DEADLINE"
        await store.close()


async def test_audit_record_carries_the_design_fields(service: Service) -> None:
    request = CallRequest(
        "0612345678", "demo-press", channel="PJSIP/trunk-1", uniqueid="17.1", callerid="0147"
    )
    verdict = await service.decide(request, now=MONDAY, record=True)
    (record,) = audit_records(service.config.audit_dir)
    expected = {
        "id", "ts", "node", "result", "reason", "rules", "number_raw", "number", "campaign",
        "principal", "purpose", "sector", "local_time", "attempts_30d", "evidence", "policy",
        "channel", "uniqueid", "callerid", "adapter", "latency_us", "degraded",
    }  # fmt: skip
    assert expected <= set(record)
    assert record["id"] == verdict.id
    assert record["number"] == "+33612345678" and record["principal"] == "ACME"
    assert record["attempts_30d"] == 1 and record["node"] == "test-node"
    assert record["local_time"] == "2026-11-30T11:00:00+01:00"
    assert record["ts"] == int(MONDAY.timestamp() * 1000)
    assert record["rules"] == [rule.as_json() for rule in verdict.decision.rules]
    assert record["rules"][-1] == {
        "rule": "frequency",
        "outcome": "pass",
        "reason": None,
        "detail": "0 of 4 attempts used",
    }


async def test_concurrent_sessions_share_a_batch_but_never_each_others_facts(
    service: Service,
) -> None:
    store = service.store
    numbers = [normalise(f"06{i:08d}") for i in range(1, 41)]
    listed = numbers[::3]
    await load(store.lists, "dnc", [DncRow(n.key, "x") for n in listed], "add")
    for n in numbers[1::3]:
        await store.count_attempt(n, "ACME", MONDAY, 4, 30, "seed")
    facts = await asyncio.gather(*(store.facts(n, "ACME", MONDAY, 30) for n in numbers))
    for number, fact in zip(numbers, facts, strict=True):
        assert (fact.dnc is not None) == (number in listed)
        assert fact.attempts_30d == (1 if number in numbers[1::3] else 0)
    counts = await asyncio.gather(
        *(store.count_attempt(n, "ACME", MONDAY, 2, 30, "again") for n in numbers)
    )
    assert counts == [(True, 2) if n in numbers[1::3] else (True, 1) for n in numbers]


async def test_a_live_do_not_call_survives_a_list_replacement(service: Service) -> None:
    store = service.store
    live, imported = normalise("0611111111"), normalise("0622222222")
    await store.dnc_add(live, "asked during a call", MONDAY)
    await load(store.lists, "dnc", [DncRow(imported.key, "crm")], "replace")
    summary = await load(store.lists, "dnc", [DncRow(imported.key, "crm")], "replace")
    live_entry = (await store.facts(live, "ACME", MONDAY, 30)).dnc
    assert live_entry == DncEntry("asked during a call", MONDAY, None)
    # An imported entry keeps no date of its own, but names the list version it is on.
    imported_entry = (await store.facts(imported, "ACME", MONDAY, 30)).dnc
    assert imported_entry == DncEntry("crm", None, summary.version)
    assert await store.dnc_remove(live) and await store.dnc_remove(imported)
    for number in (live, imported):
        assert (await store.facts(number, "ACME", MONDAY, 30)).dnc is None
    assert not await store.dnc_remove(live)


async def test_an_undecodable_entry_fails_that_decision_closed(
    service: Service, redis_client: aioredis.Redis
) -> None:
    row = ConsentRow(NUMBER, "ACME", datetime(2026, 10, 1, tzinfo=PARIS), None, "crm:42")
    version = (await load(service.store.lists, "consent", [row], "add")).version
    bucket = f"dialguard:consent:{version}:3{NUMBER.key[:-3]}"
    field = int(NUMBER.key[-3:])  # the first principal's id is 0 (store/packed.py)
    assert await redis_client.hexists(bucket, field)
    await redis_client.hset(bucket, field, "garbage")
    request = CallRequest("0612345678", "demo-prospecting")
    other = CallRequest("0622222222", "demo-press")
    broken, fine = await asyncio.gather(
        service.decide(request, now=MONDAY), service.decide(other, now=MONDAY)
    )
    assert broken.decision.reason is Reason.STORE_UNAVAILABLE and not broken.decision.allowed
    assert fine.decision.allowed  # the same batch, unaffected


async def test_a_call_the_facts_deny_gives_its_reserved_slot_back(
    service: Service, redis_client: aioredis.Redis
) -> None:
    attempts_key = service.store.keys.attempts("ACME", NUMBER.key)
    allowed = await service.decide(CallRequest("0612345678", "demo-press"), now=MONDAY, record=True)
    assert allowed.decision.allowed and allowed.decision.attempts_30d == 1
    await service.store.dnc_add(NUMBER, "asked", MONDAY)
    denied = await service.decide(CallRequest("0612345678", "demo-press"), now=MONDAY, record=True)
    assert denied.decision.reason is Reason.INTERNAL_DNC
    for _ in range(100):  # the release runs off the answer's path
        if await redis_client.zcard(attempts_key) == 1:
            break
        await asyncio.sleep(0.01)
    assert await redis_client.zrange(attempts_key, 0, -1) == [allowed.id.encode()]
    # Outside the calling hours nothing is reserved in the first place.
    night = MONDAY.replace(hour=22)
    await service.decide(CallRequest("0622222222", "demo-press"), now=night, record=True)
    assert await redis_client.exists(service.store.keys.attempts("ACME", "33622222222")) == 0


async def test_a_slot_reserved_after_the_deadline_is_given_back(tmp_path: Path) -> None:
    with running_redis() as server:
        config = make_config(server.url, tmp_path)
        store = Store.from_url(config.redis.url, config.redis.prefix, timeout_ms=5000)
        service = Service(config, store, Journal(tmp_path))
        request = CallRequest("0612345678", "demo-press")
        server.pause()
        try:
            verdict = await service.decide(request, now=MONDAY, deadline_s=0.1, record=True)
        finally:
            server.resume()
        assert verdict.decision.reason is Reason.DEADLINE
        client = aioredis.Redis.from_url(server.url)
        key = store.keys.attempts("ACME", NUMBER.key)
        # The cancellation retries until Redis answers again.
        await wait_until(lambda: not store.pending_cancels, 5)
        # A pause, not a wait: the stalled read may still be in Redis's socket buffer, and
        # nothing observable changes when it runs after the tombstone (it reserves nothing).
        await asyncio.sleep(0.2)
        assert await client.zscore("dialguard:cancelled", verdict.id) is not None
        assert await client.zcard(key) == 0
        await client.aclose()
        await store.close()


async def test_decisions_go_on_after_redis_forgets_its_scripts(
    service: Service, redis_client: aioredis.Redis
) -> None:
    # A restarted or failed-over Redis has no script cached: the facts call sent as
    # EVALSHA meets NOSCRIPT, loads the script and is sent again, still counted once.
    request = CallRequest("06 12 34 56 78", "demo-press", adapter="test")
    first = await service.decide(request, now=MONDAY, record=True)
    await redis_client.script_flush()
    second = await service.decide(request, now=MONDAY, record=True)
    assert first.decision.allowed and second.decision.allowed
    assert not first.decision.degraded and not second.decision.degraded
    assert (first.decision.attempts_30d, second.decision.attempts_30d) == (1, 2)
    assert await redis_client.script_exists(service.store._facts.sha) == [True]
