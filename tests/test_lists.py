"""The imported lists at scale, against a real Redis: atomic swap, failed and killed imports,
live changes during an import, registry result sets, dense buckets, merges, lock, freeing."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard.config import load_config
from dialguard.import_files import ConsentRow, ContractRow, DncRow, OptoutRow, parse
from dialguard.model import CallRequest, Contract, Facts, Reason, Sector
from dialguard.numbers import Number, normalise
from dialguard.policy import Regime
from dialguard.service import Service
from dialguard.store import ListBusy, Store, loading
from dialguard.store.buckets import INTSET_LIMIT
from dialguard.store.loading import Loader, Summary
from tests.redis_server import RedisServer

ROOT = Path(__file__).parent.parent
PARIS = ZoneInfo("Europe/Paris")
# The keys are spelled out here as docs/data-model.md documents them, on purpose: this file
# holds the layout that Redis instances in the field already hold (store/keys.py must not
# drift from it), where the rest of the code asks store/keys.py.
PREFIX = "dg:"
# A Tuesday 10:30 in Paris, before 2026-08-11: the opt-out (Bloctel) regime applies.
NOW = datetime(2026, 6, 2, 10, 30, tzinfo=PARIS)
TODAY = NOW.date()


@pytest.fixture
def store(redis_client: aioredis.Redis) -> Store:
    # Not closed here: closing the store would close the fixture's client, which does it.
    return Store(redis_client, PREFIX)


def num(key: str) -> Number:
    return normalise("+" + key)


def dnc_rows(keys: Iterable[str], reason: str = "") -> list[DncRow]:
    return [DncRow(key, reason) for key in keys]


async def facts_of(store: Store, keys: Sequence[str], principal: str = "ACME") -> list[Facts]:
    return list(await asyncio.gather(*(store.facts(num(k), principal, NOW, 30) for k in keys)))


async def listed(store: Store, keys: Sequence[str]) -> set[str]:
    """The keys the facts read says are on the do-not-call list."""
    facts = await facts_of(store, keys)
    return {key for key, f in zip(keys, facts, strict=True) if f.dnc is not None}


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def keys_like(client: aioredis.Redis, pattern: str) -> list[str]:
    return sorted(text(k) for k in await client.keys(pattern))


async def version_keys(client: aioredis.Redis, kind: str, version: str) -> list[str]:
    """Every key of one version of a list (`P kind:V:...`, and `P kind:V`: the one hash
    of an earlier version's consents and contracts)."""
    return [
        *await keys_like(client, f"{PREFIX}{kind}:{version}:*"),
        *await keys_like(client, f"{PREFIX}{kind}:{version}"),
    ]


def spread(head: str, count: int, step: int = 7919) -> list[str]:
    """`count` distinct 11-digit mobile keys starting with `head`, spread over many buckets."""
    width = 11 - len(head)
    return [f"{head}{(i * step) % 10**width:0{width}d}" for i in range(count)]


async def load(store: Store, kind: str, rows: Sequence[Any], mode: str, **options: Any) -> Summary:
    return await loading.load(store.lists, kind, rows, mode, **options)


async def opened(store: Store, kind: str, mode: str, **options: Any) -> Loader:
    build = loader(store, kind, mode, **options)
    await build.open()
    return build


def loader(store: Store, kind: str, mode: str, **options: Any) -> Loader:
    return Loader(
        store.lists,
        kind,
        mode,
        source="test",
        now=NOW,
        **options,
    )


# --- 1. atomic swap -----------------------------------------------------------------------


async def test_readers_see_the_old_list_or_the_new_one_whole_during_a_replace(
    store: Store, redis_client: aioredis.Redis
) -> None:
    a_keys = spread("336", 30_000)  # 10,000 buckets: freeing them takes a while
    b_keys = spread("3377", 30_000)
    first = await load(store, "dnc", dnc_rows(a_keys), "replace")
    # Fed first and last, freed in some order: a half-built or half-freed list would show.
    probe = [a_keys[0], a_keys[-1], b_keys[0], b_keys[-1]]
    in_a, in_b = set(probe[:2]), set(probe[2:])
    assert await listed(store, probe) == in_a

    replacing = asyncio.create_task(
        loading.load(
            store.lists,
            "dnc",
            dnc_rows(b_keys),
            "replace",
            chunk=500,
        )
    )
    await asyncio.sleep(0)  # let the load start
    reads: list[tuple[bool, frozenset[str], frozenset[str | None]]] = []  # (during, seen, versions)
    while True:
        running = not replacing.done()
        # One loop turn: the four requests leave in one script call, one atomic snapshot.
        facts = await facts_of(store, probe)
        during = running and not replacing.done()
        seen = frozenset(k for k, f in zip(probe, facts, strict=True) if f.dnc is not None)
        versions = frozenset(f.dnc.list_version for f in facts if f.dnc is not None)
        reads.append((during, seen, versions))
        if not running:
            break
    second = replacing.result()

    assert second.version != first.version and second.stale_versions == [first.version]
    for _, seen, versions in reads:
        assert seen in (in_a, in_b), f"a read saw {sorted(seen)}: neither list whole"
        assert versions == {first.version if seen == in_a else second.version}
    states = [seen == in_b for _, seen, _ in reads]
    assert states == sorted(states), "a read went back to the old list after seeing the new"
    seen_during = [seen for is_during, seen, _ in reads if is_during]
    assert in_a in seen_during, "no read while the new list was being built"
    assert in_b in seen_during, "no read between the swap and the end of the freeing"
    assert reads[-1][1] == in_b
    assert await version_keys(redis_client, "dnc", first.version) == []


# --- 2. failed and killed imports -------------------------------------------------------


async def test_an_aborted_replace_leaves_the_list_in_force_and_no_keys(
    store: Store, redis_client: aioredis.Redis
) -> None:
    old = spread("3361", 1000)
    first = await load(store, "dnc", dnc_rows(old), "replace")
    build = await opened(store, "dnc", "replace")
    new = [f"3369999{i:04d}" for i in range(INTSET_LIMIT + 100)]  # one bitmap bucket too
    await build.feed(dnc_rows([*new, *spread("3362", 1000)], reason="r"))
    assert build.target != first.version
    assert await version_keys(redis_client, "dnc", build.target) != []
    assert await listed(store, [old[0], new[0]]) == {old[0]}  # the build is invisible
    await build.abort()

    assert await version_keys(redis_client, "dnc", build.target) == []
    assert await listed(store, [old[0], old[-1], new[0]]) == {old[0], old[-1]}
    assert (await store.lists.current("dnc")).versions == (first.version,)
    assert await redis_client.exists(f"{PREFIX}lists:lock:dnc") == 0
    assert await redis_client.smembers(f"{PREFIX}lists:building") == set()
    await opened(store, "dnc", "replace")  # the lock is free again


async def test_the_next_import_frees_what_a_killed_import_left(
    store: Store, redis_client: aioredis.Redis
) -> None:
    old = spread("3361", 1000)
    first = await load(store, "dnc", dnc_rows(old), "replace")
    killed = await opened(store, "dnc", "replace")
    left = [f"3369999{i:04d}" for i in range(INTSET_LIMIT + 100)]
    await killed.feed(dnc_rows([*left, *spread("3362", 1000)], reason="why not"))
    leftover = killed.target
    assert f"{PREFIX}dnc:{leftover}:why" in await version_keys(redis_client, "dnc", leftover)
    del killed  # the process dies: no commit, no abort...
    await redis_client.delete(f"{PREFIX}lists:lock:dnc")  # ... and its lock expires
    assert await listed(store, [old[0], left[0]]) == {old[0]}

    third = await load(store, "dnc", dnc_rows(spread("3363", 100)), "replace")
    assert await version_keys(redis_client, "dnc", leftover) == []
    assert await version_keys(redis_client, "dnc", first.version) == []
    assert await redis_client.smembers(f"{PREFIX}lists:building") == set()
    assert (await store.lists.current("dnc")).versions == (third.version,)
    # Only the version in force is left, plus the bookkeeping.
    assert {k.split(":")[2] for k in await keys_like(redis_client, f"{PREFIX}dnc:*")} == {
        third.version
    }


class Killed(BaseException):
    """The process dies here (SIGKILL, OOM, power cut): nothing after this point runs."""


async def test_an_import_killed_after_its_swap_does_not_lose_the_list_in_force(
    store: Store, redis_client: aioredis.Redis
) -> None:
    await load(store, "dnc", dnc_rows(spread("3361", 100)), "replace")
    build = await opened(store, "dnc", "replace")
    new = spread("3362", 1000)
    await build.feed(dnc_rows(new))

    async def dies(kind: str, version: str) -> None:  # the kill, between swap and release
        raise Killed

    store.lists.release = dies  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await build.commit()
    del store.lists.release
    assert (await store.lists.current("dnc")).versions == (build.target,)
    assert await listed(store, new[:3]) == set(new[:3])  # the new list is in force
    await redis_client.delete(f"{PREFIX}lists:lock:dnc")  # the dead process's lock expires

    await load(store, "dnc", dnc_rows(["33699999999"]), "add")  # the next import
    assert await listed(store, [*new[:3], "33699999999"]) == {*new[:3], "33699999999"}
    assert await version_keys(redis_client, "dnc", build.target) != []


async def test_a_consent_given_on_the_first_supported_day_merges(store: Store) -> None:
    lines = ["number,principal,given_at,expires_at,proof_ref", "0612345678,ACME,1970-01-01,,p1"]
    parsed = parse("consent", lines, PARIS)
    assert parsed.error_count == 0
    await load(store, "consent", parsed.rows, "add")
    await load(store, "consent", parsed.rows, "add")  # the same file again
    consent = (await store.facts(num("33612345678"), "ACME", NOW, 30)).consent
    assert consent is not None and consent.proof_ref == "p1"


async def test_a_killed_import_of_another_kind_is_left_to_its_own_kind(
    store: Store, redis_client: aioredis.Redis
) -> None:
    killed = await opened(store, "dnc", "replace")
    await killed.feed(dnc_rows(spread("3361", 50), reason="r"))  # reasons are written at once
    await redis_client.delete(f"{PREFIX}lists:lock:dnc")
    await load(store, "bloctel", [OptoutRow("33612345678", False, "")], "add", checked_on=TODAY)
    await load(store, "consent", [], "replace")
    assert await version_keys(redis_client, "dnc", killed.target) != []
    await load(store, "dnc", dnc_rows(spread("3362", 10)), "add")
    assert await version_keys(redis_client, "dnc", killed.target) == []


# --- 3. live changes during an import -----------------------------------------------------


async def test_a_live_dnc_add_during_a_replace_is_kept(store: Store) -> None:
    old = spread("3361", 2000)
    await load(store, "dnc", dnc_rows(old), "replace")
    new = spread("3362", 2000)
    build = await opened(store, "dnc", "replace")
    await build.feed(dnc_rows(new[:1000]))
    asked = "33698765432"  # in neither file
    await store.dnc_add(num(asked), "asked during the call", NOW)
    await store.dnc_add(num(old[5]), "asked again", NOW)  # only in the old file
    await build.feed(dnc_rows(new[1000:]))
    await build.commit()

    facts = await facts_of(store, [asked, old[5], old[6]])
    for f in facts[:2]:
        assert f.dnc is not None and f.dnc.added_at == NOW and f.dnc.list_version is None
    assert facts[0].dnc is not None and facts[0].dnc.reason == "asked during the call"
    assert facts[1].dnc is not None and facts[1].dnc.reason == "asked again"
    assert facts[2].dnc is None  # the old list is gone


async def test_a_live_dnc_remove_during_a_replace_reaches_the_version_being_built(
    store: Store,
) -> None:
    bitmap_bucket = [f"3369999{i:04d}" for i in range(0, 2 * (INTSET_LIMIT + 100), 2)]
    old = [*spread("3361", 2000), *bitmap_bucket]
    await load(store, "dnc", dnc_rows(old), "replace")
    small, big = old[3], bitmap_bucket[7]  # in an intset bucket and in a bitmap bucket
    later = old[4]  # in both files too, but fed only after its removal
    new = [k for k in old if k != later]
    build = await opened(store, "dnc", "replace")
    await build.feed(dnc_rows(new[:1500], reason="old reason"))
    await build.feed(dnc_rows(new[1500:], reason="old reason"))
    assert small in new[:1500] and big in new[1500:]

    assert await store.dnc_remove(num(small))
    assert await store.dnc_remove(num(big))
    assert await store.dnc_remove(num(later))
    assert await listed(store, [small, big, later]) == set()  # gone from the list in force
    await build.feed(dnc_rows([later]))
    summary = await build.commit()

    assert summary.version == build.target
    facts = await facts_of(store, [small, big, old[5], bitmap_bucket[8]])
    assert facts[0].dnc is None and facts[1].dnc is None  # fed before the removal: removed
    assert facts[2].dnc is not None and facts[2].dnc.reason == "old reason"
    assert facts[3].dnc is not None
    # Fed after the removal, too: a removal made during an import is the later word.
    assert await listed(store, [later]) == set()


# --- 4. registry result sets --------------------------------------------------------------


@pytest.fixture
def service(redis_server: RedisServer, redis_client: aioredis.Redis) -> Service:
    config = load_config(
        ROOT / "config" / "dialguard.toml", env={"DIALGUARD_REDIS_URL": redis_server.url}
    )
    config = replace(config, node="test-node")
    return Service(config, Store(redis_client, config.redis.prefix), None)


async def optout_reason(service: Service, key: str) -> Reason:
    request = CallRequest("+" + key, "demo-prospecting", adapter="test")
    verdict = await service.decide(request, now=NOW)
    return verdict.decision.reason


async def test_registry_results_age_and_the_newest_check_wins(service: Service) -> None:
    assert service.config.policy.at(TODAY).regime is Regime.OPTOUT
    store = service.store
    stale, fresh, never = "33611110001", "33611110002", "33611110003"
    flip, flop, both = "33611110004", "33611110005", "33611110006"
    checked_40 = TODAY - timedelta(days=40)
    checked_5 = TODAY - timedelta(days=5)
    checked_10 = TODAY - timedelta(days=10)

    await load(store, "bloctel", [OptoutRow(stale, False, "x")], "add", checked_on=checked_40)
    assert await optout_reason(service, stale) is Reason.OPTOUT_UNVERIFIED
    assert await optout_reason(service, never) is Reason.OPTOUT_UNVERIFIED

    # The newer set, imported first; then an older one, imported later: the check date
    # decides, not the order of the imports.
    newer = [OptoutRow(fresh, False, ""), OptoutRow(flip, False, ""), OptoutRow(flop, True, "")]
    newer += [OptoutRow(both, False, "i1"), OptoutRow(both, True, "i2")]  # listed wins
    await load(store, "bloctel", newer, "add", checked_on=checked_5, ref="req-new")
    older = [OptoutRow(flip, True, ""), OptoutRow(flop, False, ""), OptoutRow(stale, False, "")]
    await load(store, "bloctel", older, "add", checked_on=checked_10)

    assert await optout_reason(service, fresh) is Reason.OPTOUT_CLEAR
    assert await optout_reason(service, flip) is Reason.OPTOUT_CLEAR
    assert await optout_reason(service, flop) is Reason.OPTOUT_LISTED
    assert await optout_reason(service, both) is Reason.OPTOUT_LISTED
    # The 10-day set answers now for `stale`: fresh enough.
    assert await optout_reason(service, stale) is Reason.OPTOUT_CLEAR
    facts = await facts_of(store, [flip, stale])
    assert facts[0].optout is not None
    assert (facts[0].optout.checked_on, facts[0].optout.ref) == (checked_5, "req-new")
    assert facts[1].optout is not None and facts[1].optout.checked_on == checked_10
    assert facts[1].optout.ref.startswith("result set ")
    assert len((await store.lists.current("optout")).versions) == 3

    # A replace drops every earlier set.
    await load(store, "bloctel", [OptoutRow(fresh, True, "")], "replace", checked_on=checked_5)
    assert len((await store.lists.current("optout")).versions) == 1
    assert await optout_reason(service, fresh) is Reason.OPTOUT_LISTED
    assert await optout_reason(service, flip) is Reason.OPTOUT_UNVERIFIED


# --- 5. exactness and encodings -----------------------------------------------------------


async def test_buckets_are_intsets_or_bitmaps_and_membership_is_exact(
    store: Store, redis_client: aioredis.Redis
) -> None:
    rng = random.Random(5)
    big1, big2, at_limit = "3361111", "3361112", "3361113"
    small = [f"336200{i}" for i in range(10)]
    offsets: dict[str, set[int]] = {
        big1: {0, *rng.sample(range(1, 9999), 998)},  # has 0000, not 9999
        big2: {9999, *rng.sample(range(1, 9999), INTSET_LIMIT)},  # just over the limit
        at_limit: {0, 9999, *rng.sample(range(1, 9999), INTSET_LIMIT - 2)},
    }
    for bucket in small:
        offsets[bucket] = set(rng.sample(range(1, 9999), 10))
    loaded = [f"{bucket}{o:04d}" for bucket, offs in offsets.items() for o in sorted(offs)]
    assert len(loaded) == 2100
    summary = await load(store, "dnc", dnc_rows(loaded), "replace")
    assert summary.size == 2100

    base = f"{PREFIX}dnc:{summary.version}:"
    buckets = {text(b) for b in await redis_client.smembers(base + "idx")}
    assert buckets == set(offsets)
    for bucket, offs in offsets.items():
        s_key, b_key = f"{base}s:{bucket}", f"{base}b:{bucket}"
        if len(offs) > INTSET_LIMIT:
            assert await redis_client.exists(s_key) == 0
            assert await redis_client.type(b_key) == b"string"
            assert await redis_client.strlen(b_key) <= 1250
            assert await redis_client.bitcount(b_key) == len(offs)
        else:
            assert await redis_client.exists(b_key) == 0
            assert await redis_client.object("encoding", s_key) == b"intset"
            assert await redis_client.scard(s_key) == len(offs)
    for key in await keys_like(redis_client, base + "*"):
        if key != base + "idx" and await redis_client.type(key) == b"set":
            assert await redis_client.object("encoding", key) == b"intset", key

    # Neighbours: same buckets, other offsets (the edges first), and a bucket never loaded.
    absent: list[str] = [f"{big1}9999", f"{big2}0000", *(f"{b}0000" for b in small)]
    absent += [f"{b}9999" for b in small] + [f"{b}0001" for b in small]
    absent += [f"3361114{o:04d}" for o in (0, 1, 9999)]
    pool = [f"{b}{o:04d}" for b, offs in offsets.items() for o in range(10_000) if o not in offs]
    absent += rng.sample([k for k in pool if k not in set(absent)], 2000 - len(absent))
    assert len(set(absent)) == 2000 and not set(absent) & set(loaded)
    assert await listed(store, loaded) == set(loaded)
    assert await listed(store, absent) == set()


_examples = itertools.count()
_BUCKETS = ("3361234", "3361235", "3376543")

keys_in_few_buckets = st.sets(
    st.tuples(st.sampled_from(_BUCKETS), st.integers(0, 9999)).map(lambda t: f"{t[0]}{t[1]:04d}"),
    max_size=120,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    loaded=keys_in_few_buckets,
    removed=keys_in_few_buckets,
    others=keys_in_few_buckets,
    limit=st.sampled_from([1, 8, 40, INTSET_LIMIT]),
    chunk=st.integers(1, 60),
)
def test_membership_matches_a_python_set(
    redis_server: RedisServer,
    loaded: set[str],
    removed: set[str],
    others: set[str],
    limit: int,
    chunk: int,
) -> None:
    """Random numbers in a few buckets, loaded in random chunks with an intset limit low
    enough to turn buckets into bitmaps, then some removed: the facts read agrees with
    the set arithmetic for every number asked about."""

    async def check() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        prefix = f"dgh{next(_examples)}:"
        try:
            store = Store(client, prefix)
            build = Loader(
                store.lists,
                "dnc",
                "replace",
                source="hypothesis",
                now=NOW,
                intset_limit=limit,
            )
            await build.open()
            rows = dnc_rows(sorted(loaded))
            for start in range(0, len(rows), chunk):
                await build.feed(rows[start : start + chunk])
            await build.commit()
            removal = Loader(store.lists, "dnc", "remove", source="h", now=NOW)
            await removal.open()
            await removal.feed(dnc_rows(sorted(removed)))
            await removal.commit()
            asked = sorted(loaded | removed | others)
            facts = await asyncio.gather(*(store.facts(num(k), "ACME", NOW, 30) for k in asked))
            seen = {k for k, f in zip(asked, facts, strict=True) if f.dnc is not None}
            assert seen == loaded - removed
        finally:
            keys = await client.keys(prefix + "*")
            if keys:
                await client.delete(*keys)
            await client.aclose()

    asyncio.run(check())


# --- 6. merges ----------------------------------------------------------------------------


async def test_dnc_add_and_remove_files_change_the_version_in_force(
    store: Store, redis_client: aioredis.Redis
) -> None:
    first = await load(store, "dnc", dnc_rows(spread("3361", 100)), "replace")
    added = await load(
        store, "dnc", [DncRow("33622220001", "court order"), DncRow("33622220002", "")], "add"
    )
    assert added.version == first.version and added.changed == 2 and added.size == 102
    assert (await store.lists.current("dnc")).versions == (first.version,)
    facts = await facts_of(store, ["33622220001", "33622220002", spread("3361", 1)[0]])
    assert [f.dnc.reason if f.dnc else None for f in facts] == [
        "court order",
        "imported",
        "imported",
    ]
    assert {f.dnc.list_version if f.dnc else None for f in facts} == {first.version}

    live = "33633330003"
    await store.dnc_add(num(live), "on the phone", NOW)
    removed = await load(store, "dnc", dnc_rows(["33622220001", live, "33644440004"]), "remove")
    assert removed.version == first.version
    assert (removed.changed, removed.unchanged, removed.size) == (2, 1, 101)
    assert await listed(store, ["33622220001", live, "33622220002"]) == {"33622220002"}
    assert await redis_client.hexists(f"{PREFIX}dnc:{first.version}:why", "33622220001") == 0
    # Re-added without a reason: the old reason went with the removal.
    await load(store, "dnc", dnc_rows(["33622220001"]), "add")
    again = (await facts_of(store, ["33622220001"]))[0]
    assert again.dnc is not None and again.dnc.reason == "imported"


async def test_a_remove_file_with_no_list_imported_still_removes_live_entries(
    store: Store,
) -> None:
    live = "33633330003"
    await store.dnc_add(num(live), "on the phone", NOW)
    summary = await load(store, "dnc", dnc_rows([live]), "remove")
    assert summary.changed == 1
    assert await listed(store, [live]) == set()


async def test_the_latest_consent_is_kept_whatever_the_order(store: Store) -> None:
    one, two = num("33611111111"), num("33622222222")
    early = datetime(2026, 1, 1, 9, 0, tzinfo=PARIS)
    late = datetime(2026, 3, 1, 9, 0, tzinfo=PARIS)

    def consent(number: Number, given: datetime, proof: str) -> ConsentRow:
        return ConsentRow(number, "ACME", given, None, proof)

    # Within one file, either order.
    await load(
        store,
        "consent",
        [
            consent(one, late, "one-late"),
            consent(one, early, "one-early"),
            consent(two, early, "two-early"),
            consent(two, late, "two-late"),
        ],
        "replace",
    )
    # Across files: an older consent in a later file does not win.
    await load(store, "consent", [consent(one, early, "again-early")], "add")
    facts = await asyncio.gather(
        store.facts(one, "ACME", NOW, 30), store.facts(two, "ACME", NOW, 30)
    )
    assert [f.consent.proof_ref if f.consent else None for f in facts] == ["one-late", "two-late"]
    assert facts[0].consent is not None and facts[0].consent.given_at == late
    # A newer one in a later file does.
    newest = late + timedelta(days=1)
    await load(store, "consent", [consent(two, newest, "two-newest")], "add")
    facts2 = await store.facts(two, "ACME", NOW, 30)
    assert facts2.consent is not None
    assert (facts2.consent.proof_ref, facts2.consent.given_at) == ("two-newest", newest)


async def test_a_contract_file_holds_the_whole_set_of_each_pair_it_names(store: Store) -> None:
    number, other = num("33611111111"), num("33622222222")
    k1 = Contract("K-1", Sector.GENERAL, date(2025, 1, 1), None)
    k2 = Contract("K-2", Sector.ENERGY_RENOVATION, date(2025, 6, 1), date(2026, 12, 31))
    k1_ended = Contract("K-1", Sector.GENERAL, date(2025, 1, 1), date(2026, 1, 31))
    first = [ContractRow(number, "ACME", k1), ContractRow(number, "ACME", k2)]
    await load(store, "contract", [*first, ContractRow(other, "ACME", k1)], "replace")
    assert (await store.facts(number, "ACME", NOW, 30)).contracts == (k1, k2)

    # A merge naming the pair again: its rows are the pair's whole set (K-2 is gone);
    # the same id twice in one file: the later row; a pair it does not name: untouched.
    again = [ContractRow(number, "ACME", k1), ContractRow(number, "ACME", k1_ended)]
    await load(store, "contract", again, "add")
    assert (await store.facts(number, "ACME", NOW, 30)).contracts == (k1_ended,)
    assert (await store.facts(other, "ACME", NOW, 30)).contracts == (k1,)
    assert (await store.facts(number, "OTHER", NOW, 30)).contracts == ()


# --- 7. the lock --------------------------------------------------------------------------


async def test_one_import_per_list_at_a_time(store: Store) -> None:
    first = await opened(store, "dnc", "replace")
    with pytest.raises(ListBusy):
        await loader(store, "dnc", "add").open()
    with pytest.raises(ListBusy):
        await load(store, "dnc", dnc_rows(["33611111111"]), "add")
    other = loader(store, "bloctel", "replace", checked_on=TODAY)
    await other.open()  # another list: fine
    await other.feed([OptoutRow("33611111111", True, "")])
    await other.commit()
    await first.feed(dnc_rows(["33622222222"]))
    await first.commit()
    await load(store, "dnc", dnc_rows(["33611111111"]), "add")  # free again
    assert await listed(store, ["33611111111", "33622222222"]) == {"33611111111", "33622222222"}


async def test_back_to_back_imports_of_one_list_are_not_refused(store: Store) -> None:
    # The lock is deleted when an import ends, not left to expire (it was given a 1 ms
    # expiry once, and most imports started right after one were refused).
    for i in range(20):
        await load(store, "dnc", dnc_rows([f"336123{i:05d}"]), "add")
    assert len(await listed(store, [f"336123{i:05d}" for i in range(20)])) == 20


# --- 8. freeing ---------------------------------------------------------------------------


async def test_a_replace_frees_every_key_of_the_old_version(
    store: Store, redis_client: aioredis.Redis
) -> None:
    bitmap = [f"3369999{i:04d}" for i in range(INTSET_LIMIT + 1)]
    first = await load(
        store, "dnc", dnc_rows([*spread("3361", 3000), *bitmap], reason="r"), "replace"
    )
    old_keys = await version_keys(redis_client, "dnc", first.version)
    assert f"{PREFIX}dnc:{first.version}:why" in old_keys
    assert f"{PREFIX}dnc:{first.version}:b:3369999" in old_keys
    assert len(old_keys) > 1000
    second = await load(store, "dnc", dnc_rows(spread("3362", 10)), "replace")
    assert second.stale_versions == [first.version]
    assert await version_keys(redis_client, "dnc", first.version) == []

    sets = []
    for days in (3, 2):
        rows = [OptoutRow(k, i % 2 == 0, "") for i, k in enumerate(spread("3361", 600))]
        sets.append(await load(store, "bloctel", rows, "add", checked_on=TODAY - timedelta(days)))
    for s in sets:  # an `add` keeps the earlier sets
        assert await version_keys(redis_client, "optout", s.version) != []
    last = await load(
        store, "bloctel", [OptoutRow("33611111111", False, "")], "replace", checked_on=TODAY
    )
    assert sorted(last.stale_versions) == sorted(s.version for s in sets)
    for s in sets:
        assert await version_keys(redis_client, "optout", s.version) == []

    number = num("33611111111")
    row = ConsentRow(number, "ACME", NOW - timedelta(days=1), None, "p")
    c1 = await load(store, "consent", [row], "replace")
    assert await version_keys(redis_client, "consent", c1.version) != []
    c2 = await load(store, "consent", [row], "replace")
    assert await version_keys(redis_client, "consent", c1.version) == []
    assert (await store.facts(number, "ACME", NOW, 30)).consent is not None
    assert c2.version != c1.version


async def test_buckets_follow_a_lower_intset_limit_of_this_redis(
    store: Store, redis_client: aioredis.Redis
) -> None:
    # A Redis configured to turn intsets into hashtables sooner: buckets become bitmaps
    # sooner instead of hashtables (~50 bytes a member).
    saved = (await redis_client.config_get("set-max-intset-entries"))["set-max-intset-entries"]
    assert saved is not None
    await redis_client.config_set("set-max-intset-entries", 64)
    try:
        keys = [f"3361234{o:04d}" for o in range(0, 2000, 20)]  # 100 numbers, one bucket
        keys += [f"3361235{o:04d}" for o in range(0, 600, 20)]  # 30
        summary = await load(store, "dnc", dnc_rows(keys), "replace")
    finally:
        await redis_client.config_set("set-max-intset-entries", saved)
    base = f"{PREFIX}dnc:{summary.version}:"
    assert await redis_client.type(base + "b:3361234") == b"string"
    assert await redis_client.exists(base + "s:3361234") == 0
    assert await redis_client.object("encoding", base + "s:3361235") == b"intset"
    assert await listed(store, [keys[0], keys[99], keys[-1], "33612340001"]) == {
        keys[0],
        keys[99],
        keys[-1],
    }


async def test_versions_left_by_a_crash_while_freeing_are_freed_by_the_next_import(
    store: Store, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = spread("3361", 1000)
    first = await load(store, "dnc", dnc_rows(old), "replace")
    new = spread("3362", 1000)
    build = await opened(store, "dnc", "replace")
    await build.feed(dnc_rows(new))

    async def crash(kind: str, version: str) -> None:
        raise RuntimeError("killed while freeing")

    monkeypatch.setattr(store.lists, "free", crash)
    with pytest.raises(RuntimeError):
        await build.commit()
    monkeypatch.undo()
    # The new list is in force; the old one is still there, but not forgotten.
    assert await listed(store, [old[0], new[0]]) == {new[0]}
    assert await version_keys(redis_client, "dnc", first.version) != []

    await load(store, "dnc", dnc_rows(["33699999999"]), "add")
    assert await version_keys(redis_client, "dnc", first.version) == []
    assert await listed(store, [old[0], new[0], "33699999999"]) == {new[0], "33699999999"}
    assert await redis_client.smembers(f"{PREFIX}lists:building") == set()
