"""The scrub's facts script (store.bulk.SCAN_FACTS) answers what the decision's script
answers, number for number.

A Redis holding every kind of fact, set up as the service and the imports write them
(an imported do-not-call list with reasons, live entries, two registry result sets that
disagree, consents and contracts of two principals, withdrawals, refusals, attempts
inside and outside the window, bitmap and intset buckets), then the same numbers read
by `Store.facts` (no slot reserved) and by `BulkFacts.scan`: the facts must be equal.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import redis

from dialguard.changes import Change, ChangeKind
from dialguard.import_files import ConsentRow, ContractRow, DncRow, OptoutRow
from dialguard.model import Contract, Facts, Sector
from dialguard.numbers import Number, normalise
from dialguard.store import Store
from dialguard.store.bulk import MAX_BATCH, NOTHING, each_number, split_times
from dialguard.store.facts import Decoder
from dialguard.store.loading import load
from tests.redis_server import RedisServer

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 7, 10, 30, tzinfo=PARIS)
OLDEST = date(2026, 11, 1)  # the first registry result set's check


async def test_scan_facts_answers_as_the_decision_script(clean_redis: RedisServer) -> None:
    rng = random.Random(5)
    store = Store.from_url(clean_redis.url, "dialguard:", 5000)
    try:
        numbers = [normalise(f"06{rng.randrange(10**8):08d}") for _ in range(600)]
        numbers += [normalise(n) for n in ("0692123456", "0596123456", "0147000000")]
        # A dense block too: in the first result set whole, its bucket is a bitmap.
        block = [normalise(f"0700000{i:03d}") for i in range(1000)]
        numbers += block

        def some(share: float) -> list[Number]:
            return [n for n in numbers if rng.random() < share]

        reasons = [DncRow(n.key, rng.choice(["", "asked"])) for n in some(0.2)]
        await load(store.lists, "dnc", reasons)
        for checked_on, share in ((OLDEST, 0.5), (date(2026, 11, 20), 0.3)):
            chosen = some(share) if share < 0.5 else list({*some(share), *block})
            rows = [OptoutRow(n.key, rng.random() < 0.3, "r") for n in chosen]
            await load(store.lists, "bloctel", rows, checked_on=checked_on)
        with redis.Redis.from_url(clean_redis.admin_url) as client:
            assert any(client.scan_iter(match="dialguard:optout:*:b:*"))  # a bitmap bucket
        consents = [
            ConsentRow(n, principal, NOW - timedelta(days=rng.randrange(1, 400)), None, "p")
            for n in some(0.5)
            for principal in ("ACME", "OTHER")
            if rng.random() < 0.7
        ]
        await load(store.lists, "consent", consents)
        contracts = [
            ContractRow(n, "ACME", Contract(f"k{i}", Sector.GENERAL, date(2026, 1, 1), None))
            for i, n in enumerate(some(0.05))
        ]
        await load(store.lists, "contract", contracts)
        for n in some(0.05):
            await store.dnc_add(n, "live", NOW - timedelta(days=2))
        for n in some(0.1):
            await store.withdraw_consent(n, rng.choice(["ACME", "OTHER"]), NOW - timedelta(days=3))
        for n in some(0.05):
            await store.record_refusal(n, rng.choice(["ACME", "OTHER"]), NOW - timedelta(days=9))
        for i, n in enumerate(some(0.2)):
            for j in range(rng.randrange(1, 6)):
                when = NOW - timedelta(days=rng.randrange(0, 45), minutes=j)
                await store.count_attempt(n, "ACME", when, 100, 60, f"a{i}-{j}")
        # Live consents and contracts (added, and ended), and a principal's own
        # do-not-call: what the service writes beside the imported lists.
        ms = int(NOW.timestamp() * 1000)
        live: list[Change] = []
        for i, n in enumerate(some(0.1)):
            given = ms - rng.randrange(1, 90) * 86_400_000
            live.append(
                Change(
                    f"c{i}",
                    given,
                    ChangeKind.CONSENT_ADD,
                    n.key,
                    rng.choice(["ACME", "OTHER"]),
                    given_ms=given,
                    proof_ref=f"web-{i}",
                )
            )
        for i, n in enumerate(some(0.05)):
            live.append(
                Change(
                    f"k{i}",
                    ms - 86_400_000,
                    ChangeKind.CONTRACT_ADD,
                    n.key,
                    "ACME",
                    contract_id=f"live{i}",
                    sector="general",
                    start="2026-01-01",
                )
            )
            if i % 2:
                live.append(
                    Change(
                        f"e{i}",
                        ms - 3_600_000,
                        ChangeKind.CONTRACT_END,
                        n.key,
                        "ACME",
                        contract_id=f"live{i}",
                        end="2026-11-30",
                    )
                )
        for i, n in enumerate(some(0.05)):
            live.append(
                Change(f"p{i}", ms - 7_200_000, ChangeKind.DNC_ADD, n.key, "ACME", why="own")
            )
        for change in live:
            assert await store.apply(change)
        for window in (30, 10):
            read = [await store.facts(n, "ACME", NOW, window) for n in numbers]
            # A withdrawal is read of a number with a consent alone: the rules read it
            # of no other (policy._consent_basis).
            assert any(f.withdrawn_at and f.consent is None for f in read)
            expected = [f if f.consent else replace(f, withdrawn_at=None) for f in read]
            found = await scanned(store, numbers, window)
            assert found == expected
            assert any(f.dnc for f in found) and any(f.optout for f in found)
            assert any(f.consent for f in found) and any(f.contracts for f in found)
            assert any(f.withdrawn_at for f in found) and any(f.refused_at for f in found)
            assert any(f.attempts_30d for f in found)
            assert any(f.dnc and f.dnc.principal_only for f in found)
            assert any(f.consent and f.consent.proof_ref.startswith("web-") for f in found)
            assert any(c.contract_id.startswith("live") for f in found for c in f.contracts)
            # The registry as the consent regime reads it: the listings of numbers with a
            # consent, no clear answer of the oldest set (a newer set's still hides its
            # listings); what a number gets otherwise is none.
            consent_read = await scanned(store, numbers, window, consent_regime=True)

            def unread(f: Facts) -> bool:
                oldest_clear = f.optout and not f.optout.listed and f.optout.checked_on == OLDEST
                return f.consent is None or bool(oldest_clear)

            assert any(f.optout and unread(f) for f in found)
            assert any(f.optout and not unread(f) for f in found)
            assert consent_read == [replace(f, optout=None) if unread(f) else f for f in found]
            # A number on the company's list gets that entry alone; one without a
            # consent or a contract, no attempts.
            final = await scanned(store, numbers, window, dnc_final=True, basis_first=True)
            assert any(f.dnc and f.consent for f in found)
            assert any(f.attempts_30d and not (f.consent or f.contracts) for f in found)
            assert final == [
                Facts(dnc=f.dnc)
                if f.dnc
                else f
                if f.consent or f.contracts
                else replace(f, attempts_30d=0)
                for f in found
            ]
        # From a count on, the instants of the attempts after the window's start (the
        # longest window's: `times_window_days`), oldest first, as the store holds them.
        start_ms = int(NOW.timestamp() * 1000) - 40 * 86_400_000
        batches = [(None, [(n.key, 30) for n in numbers[i : i + MAX_BATCH]])
                   for i in range(0, len(numbers), MAX_BATCH)]  # fmt: skip
        scan = store.bulk.scan("ACME", NOW, batches, times_from=2, times_window_days=40)
        timed: list[tuple[int, list[int] | None]] = []
        async for answer in scan:
            for reply in answer.entries:
                entry, times = (NOTHING, None) if reply is None else split_times(reply)
                timed.append((entry[6], times))
        assert any(times for _, times in timed) and any(c == 1 for c, _ in timed)
        with redis.Redis.from_url(clean_redis.admin_url) as client:
            for number, (counted, times) in zip(numbers, timed, strict=True):
                key = f"dialguard:att:ACME:{number.key}"
                held = client.zrangebyscore(key, f"({start_ms}", "+inf", withscores=True)
                assert times == (None if counted < 2 else [int(t) for _, t in held])
    finally:
        await store.close()


async def scanned(
    store: Store,
    numbers: list[Number],
    window: int,
    consent_regime: bool = False,
    dnc_final: bool = False,
    basis_first: bool = False,
) -> list[Facts]:
    batches = [
        (None, [(n.key, window) for n in numbers[i : i + MAX_BATCH]])
        for i in range(0, len(numbers), MAX_BATCH)
    ]
    decoder = Decoder()
    found: list[Facts] = []
    scan = store.bulk.scan(
        "ACME",
        NOW,
        batches,
        in_flight=2,
        consent_regime=consent_regime,
        dnc_final=dnc_final,
        basis_first=basis_first,
    )
    async for answer in scan:
        for entry in each_number(answer.entries):
            facts = decoder.facts(entry, answer.lists)
            assert isinstance(facts, Facts)
            found.append(facts)
    return found
