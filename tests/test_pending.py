"""Nothing lost: changes taken while Redis is away are journalled first, count in decisions
at once, and reach Redis by themselves once it answers, exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dialguard.audit import AuditUnavailable, Journal
from dialguard.changes import Change, ChangeKind
from dialguard.import_files import DncRow
from dialguard.model import CallRequest, FailMode, Reason, Result
from dialguard.numbers import Number, normalise
from dialguard.pending import PENDING_DAYS, journal_changes
from dialguard.service import OutcomeKind, OutcomeStatus, Service
from dialguard.store import Store
from dialguard.store.keys import Keys
from dialguard.store.loading import Loader, load
from tests.cli_runner import run_dialguard
from tests.journal import audit_records
from tests.redis_server import RedisServer, free_port, running_redis
from tests.test_service import MONDAY, make_config

NUMBER = "0612345678"
KEYS = Keys("dialguard:")  # the shipped configuration's prefix


@asynccontextmanager
async def running_service(port: int, audit_dir: Path) -> AsyncIterator[Service]:
    """A service as `serve` runs one: started (pending changes read back), then closed."""
    config = make_config(f"redis://127.0.0.1:{port}/0", audit_dir)
    store = Store.from_url(config.redis.url, config.redis.prefix, 500)
    service = Service(config, store, Journal(audit_dir), clock=lambda: MONDAY)
    await service.start()
    try:
        yield service
    finally:
        await service.aclose()
        await store.close()


async def within(seconds: float, check: Callable[[], Awaitable[bool]]) -> float:
    """How long `check` took to hold, failing past `seconds`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def reason(service: Service, campaign: str = "demo-survey") -> Reason:
    return (await service.decide(CallRequest(NUMBER, campaign), now=MONDAY)).decision.reason


async def take_changes_with_redis_down(service: Service) -> list[str]:
    """A do-not-call outcome during a survey call and a `dnc add`, Redis away: both wait."""
    said = CallRequest(NUMBER, "demo-survey", adapter="fastagi")
    outcome = await service.record_outcome(said, OutcomeKind.DO_NOT_CALL, now=MONDAY)
    assert outcome.status is OutcomeStatus.PENDING
    _, added_id, applied = await service.dnc_add("0622222222", "asked by letter", MONDAY)
    assert not applied
    return [outcome.id, added_id]


async def applied_once(port: int, ids: list[str]) -> None:
    client = aioredis.Redis(port=port, decode_responses=True)
    try:
        marks = await client.zrange(KEYS.applied, 0, -1)
        assert sorted(str(m) for m in marks) == sorted(ids)
        assert await client.hlen(KEYS.dnc_live) == 2
    finally:
        await client.aclose()


async def test_changes_taken_while_redis_is_down_reach_it_by_themselves(tmp_path: Path) -> None:
    port = free_port()
    audit = tmp_path / "audit"
    with running_redis(port):
        async with running_service(port, audit) as service:
            assert await reason(service) is Reason.NON_COMMERCIAL  # a survey: lawful
    # Redis killed: the changes are taken all the same.
    async with running_service(port, audit) as service:
        ids = await take_changes_with_redis_down(service)
        # During the gap, even failing open, the number is not called.
        gap = await service.decide(CallRequest(NUMBER, "demo-survey"), now=MONDAY)
        assert (gap.decision.result, gap.decision.reason) == (Result.DENY, Reason.INTERNAL_DNC)
        assert "pending" in gap.decision.degraded
        # Redis comes back, empty: no restart, nobody does anything.
        with running_redis(port):

            async def denied() -> bool:
                return await reason(service) is Reason.INTERNAL_DNC and not len(service.pending)

            assert await within(5.0, denied) < 5.0
            assert await reason(service, "demo-press") is Reason.INTERNAL_DNC
            await applied_once(port, ids)
    changes = [r for r in audit_records(audit) if r["kind"] != "decision"]
    assert [r["id"] for r in changes] == ids  # one record each, written first


async def test_a_restarted_service_applies_what_an_earlier_one_left(tmp_path: Path) -> None:
    port = free_port()
    audit = tmp_path / "audit"
    async with running_service(port, audit) as service:  # Redis down all along
        ids = await take_changes_with_redis_down(service)
    with running_redis(port):
        async with running_service(port, audit) as service:

            async def denied() -> bool:
                return await reason(service) is Reason.INTERNAL_DNC

            await within(5.0, denied)
            await within(5.0, lambda: asyncio.sleep(0, not len(service.pending)))
        await applied_once(port, ids)
        # And once more: a third start finds them applied and applies nothing again.
        async with running_service(port, audit) as service:
            assert not len(service.pending)
        await applied_once(port, ids)


async def test_a_change_another_process_journals_is_applied_too(tmp_path: Path) -> None:
    """`dialguard dnc add` while Redis was down: the running service finds it in the
    journal and applies it."""
    port = free_port()
    audit = tmp_path / "audit"
    with running_redis(port):
        async with running_service(port, audit) as service:
            config = make_config("redis://127.0.0.1:1/0", audit)  # the CLI: Redis unreachable
            cli_store = Store.from_url(config.redis.url, config.redis.prefix, 500)
            cli = Service(config, cli_store, Journal(audit))
            _, change_id, applied = await cli.dnc_add(NUMBER, "asked on the phone", MONDAY)
            await cli_store.close()
            assert not applied

            async def denied() -> bool:
                return await reason(service) is Reason.INTERNAL_DNC

            await within(5.0, denied)
            client = aioredis.Redis(port=port)
            assert await client.zscore(KEYS.applied, change_id) is not None
            await client.aclose()


async def test_a_refusal_pending_blocks_the_consumer_at_once(tmp_path: Path) -> None:
    async with running_service(free_port(), tmp_path / "audit") as service:
        said = CallRequest(NUMBER, "demo-prospecting", adapter="fastagi")
        result = await service.record_outcome(said, OutcomeKind.REFUSED, now=MONDAY)
        assert result.status is OutcomeStatus.PENDING
        [waiting] = list(service.pending)
        assert waiting.refuses and waiting.withdraws and waiting.id == result.id


async def test_a_journal_outage_gives_the_slot_back(tmp_path: Path) -> None:
    port = free_port()
    with running_redis(port):
        blocker = tmp_path / "journal"
        blocker.write_text("")  # a file where the journal's directory should go
        config = make_config(f"redis://127.0.0.1:{port}/0", blocker / "audit")
        store = Store.from_url(config.redis.url, config.redis.prefix, 2000)
        unwritable = Service(config, store, Journal(blocker / "audit"), clock=lambda: MONDAY)
        request = CallRequest(NUMBER, "demo-press")
        for _ in range(3):
            with pytest.raises(AuditUnavailable):
                await unwritable.decide(request, now=MONDAY, record=True)
        await unwritable.aclose()
        await store.close()  # the releases go out before it closes
        # No answer was given, no call placed: the four calls of the window are all left.
        store = Store.from_url(config.redis.url, config.redis.prefix, 2000)
        service = Service(config, store, Journal(tmp_path / "audit"), clock=lambda: MONDAY)
        later = await service.decide(request, now=MONDAY + timedelta(minutes=1), record=True)
        assert later.decision.allowed and later.decision.attempts_30d == 1
        await service.aclose()
        await store.close()


async def test_a_change_still_waiting_counts_while_redis_answers(tmp_path: Path) -> None:
    """Redis reads again but has not taken the change yet: decisions see it already."""
    port = free_port()
    with running_redis(port):
        config = make_config(f"redis://127.0.0.1:{port}/0", tmp_path / "audit")
        store = Store.from_url(config.redis.url, config.redis.prefix, 2000)
        service = Service(config, store, Journal(tmp_path / "audit"), clock=lambda: MONDAY)
        assert await reason(service, "demo-prospecting") is Reason.NO_CONSENT
        waiting = [
            Change(
                "a1", int(MONDAY.timestamp() * 1000), ChangeKind.DNC_ADD, "33612345678", why="x"
            ),
            Change(
                "a2",
                int(MONDAY.timestamp() * 1000),
                ChangeKind.OUTCOME,
                "33612345678",
                "ACME",
                "refused",
            ),
        ]
        service.pending.queue(waiting)  # not started: nothing applies them
        assert await reason(service) is Reason.INTERNAL_DNC
        dnc_exempt = await service.decide(CallRequest(NUMBER, "demo-press"), now=MONDAY)
        assert dnc_exempt.decision.reason is Reason.INTERNAL_DNC
        assert (await store.facts(_number(), "ACME", MONDAY, 30)).dnc is None  # not in Redis
        await service.pending.apply_all()
        assert (await store.facts(_number(), "ACME", MONDAY, 30)).refused_at is not None
        await store.close()


def _number() -> Number:
    return normalise(NUMBER)


@pytest.mark.parametrize("tamper", ["edit", "remove"])
def test_verify_catches_an_edited_or_removed_change_record(tmp_path: Path, tamper: str) -> None:
    audit = tmp_path / "audit"

    async def journal_changes() -> None:
        async with running_service(free_port(), audit) as service:  # Redis down: kept anyway
            await service.dnc_add(NUMBER, "asked", MONDAY)
            await service.dnc_remove(NUMBER, "consent given", MONDAY + timedelta(minutes=1))
            await service.decide(CallRequest(NUMBER, "demo-press"), now=MONDAY, record=True)

    asyncio.run(journal_changes())
    assert run_dialguard(["audit", "verify", "--dir", audit]).code == 0
    (path,) = audit.glob("audit-*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    removal = next(i for i, line in enumerate(lines) if b'"kind":"dnc-remove"' in line)
    if tamper == "edit":  # the reason a number could be called again, rewritten
        lines[removal] = lines[removal].replace(b"consent given", b"asked by itself")
    else:
        del lines[removal]
    path.write_bytes(b"".join(lines))
    run = run_dialguard(["audit", "verify", "--dir", audit])
    assert run.code == 3 and run.out.startswith("NOT INTACT after "), run


async def test_a_removal_applied_late_never_undoes_a_later_do_not_call(
    redis_client: aioredis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The CLI removed the number while Redis was away; Redis is back and, before the
    removal is applied, the consumer says "never call me" during a call: the late removal
    must not take the newer request away."""
    config = make_config(redis_server.url, tmp_path / "audit")
    store = Store.from_url(config.redis.url, config.redis.prefix, 2000)
    ms, key = int(MONDAY.timestamp() * 1000), _number().key
    removal = Change("r1", ms, ChangeKind.DNC_REMOVE, key, why="asked to be called")
    request = Change("a2", ms + 60_000, ChangeKind.OUTCOME, key, "ACME", "do-not-call", "said")
    assert await store.apply(request)
    await store.apply(removal)  # late: it waited while the request went straight through
    facts = await store.facts(_number(), "ACME", MONDAY, 30)
    assert facts.dnc is not None and facts.dnc.reason == "said"
    assert await store.applied(["r1", "a2"]) == {"r1", "a2"}
    await store.close()


async def test_failing_open_never_lets_through_what_waits(tmp_path: Path) -> None:
    """Redis away, a campaign that fails open: a refusal or a withdrawal taken meanwhile on
    this node still denies (the rest of what Redis knows is unknown, so only denials)."""
    config = make_config(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "audit")
    press = replace(config.campaigns["demo-press"], fail_mode=FailMode.OPEN)
    prospecting = replace(config.campaigns["demo-prospecting"], fail_mode=FailMode.OPEN)
    campaigns = {**config.campaigns, "demo-press": press, "demo-prospecting": prospecting}
    config = replace(config, campaigns=campaigns)
    store = Store.from_url(config.redis.url, config.redis.prefix, 500)
    service = Service(config, store, Journal(tmp_path / "audit"), clock=lambda: MONDAY)
    other = CallRequest("0622222222", "demo-press")
    assert (await service.decide(other, now=MONDAY)).decision.result is Result.ALLOW  # open
    said = CallRequest(NUMBER, "demo-press", adapter="fastagi")
    assert (
        await service.record_outcome(said, "refused", now=MONDAY)
    ).status is OutcomeStatus.PENDING
    later = MONDAY + timedelta(hours=1)
    refused = await service.decide(CallRequest(NUMBER, "demo-press"), now=later)
    assert (refused.decision.result, refused.decision.reason) == (
        Result.DENY,
        Reason.RECENT_REFUSAL,
    )
    assert "pending in the journal" in refused.decision.degraded
    _, _, applied = await service.withdraw_consent("0633333333", "ACME", MONDAY)
    assert not applied
    withdrawn = await service.decide(CallRequest("0633333333", "demo-prospecting"), now=later)
    assert withdrawn.decision.result is Result.DENY
    assert (await service.decide(other, now=later)).decision.result is Result.ALLOW  # the rest
    await store.close()


async def test_a_change_applied_twice_or_late_changes_nothing(
    redis_client: aioredis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Another worker, apply-pending or a restart may apply a change again, after newer
    ones: each change takes effect once, and the latest stands."""
    config = make_config(redis_server.url, tmp_path / "audit")
    store = Store.from_url(config.redis.url, config.redis.prefix, 2000)
    ms, key = int(MONDAY.timestamp() * 1000), _number().key
    a1 = Change("a1", ms, ChangeKind.DNC_ADD, key, why="old")
    r2 = Change("r2", ms + 1000, ChangeKind.DNC_REMOVE, key, why="asked to be called")
    a3 = Change("a3", ms + 2000, ChangeKind.DNC_ADD, key, why="new")
    for change in (a1, r2, a3):
        assert await store.apply(change)
    for change in (a1, r2):  # a stale queue, applied again after a3
        assert not await store.apply(change)
    facts = await store.facts(_number(), "ACME", MONDAY, 30)
    assert facts.dnc is not None and facts.dnc.reason == "new"
    # An import lists the number again after a removal: the removal applied again later
    # (a restart that could not read the marks queues it) does not take it off.
    await load(store.lists, "dnc", [DncRow(key, "letter")], "replace")
    removal = Change("r4", ms + 3000, ChangeKind.DNC_REMOVE, key, why="x")
    assert await store.apply(removal)
    await load(store.lists, "dnc", [DncRow(key, "letter of objection")], "add")
    assert not await store.apply(removal)
    facts = await store.facts(_number(), "ACME", MONDAY, 30)
    assert facts.dnc is not None and facts.dnc.reason == "letter of objection"
    # A change dated far ahead trims no mark: marks age by the applier's clock.
    ahead = Change("w5", ms + 400 * 86_400_000, ChangeKind.CONSENT_WITHDRAW, key, "ACME")
    assert await store.apply(ahead)
    assert await store.applied(["a1", "r2", "a3", "r4", "w5"]) == {"a1", "r2", "a3", "r4", "w5"}
    await store.close()


async def test_a_removal_file_does_not_undo_a_do_not_call_taken_while_it_loads(
    redis_client: aioredis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = make_config(redis_server.url, tmp_path / "audit")
    store = Store.from_url(config.redis.url, config.redis.prefix, 2000)
    ms, key = int(MONDAY.timestamp() * 1000), _number().key
    older = Change("a0", ms - 60_000, ChangeKind.DNC_ADD, "33622222222", why="before the file")
    assert await store.apply(older)
    removal = Loader(store.lists, "dnc", "remove", source="letters.csv", now=MONDAY)
    await removal.open()
    said = Change("a1", ms + 60_000, ChangeKind.OUTCOME, key, "ACME", "do-not-call", "said")
    assert await store.apply(said)  # during the import
    await removal.feed_keys([key, "33622222222"])
    await removal.commit()
    assert (await store.facts(_number(), "ACME", MONDAY, 30)).dnc is not None  # kept
    before = await store.facts(normalise("0622222222"), "ACME", MONDAY, 30)
    assert before.dnc is None  # the file's to remove
    await store.close()


async def test_an_old_journal_file_restored_while_serving_is_not_replayed(tmp_path: Path) -> None:
    """A backup of an old day copied back while `serve` runs: its removals (their applied
    marks long gone from Redis) must not be applied again; a journal's new file is read."""
    old_day, audit = tmp_path / "old", tmp_path / "audit"
    config = make_config("redis://127.0.0.1:1/0", audit)  # Redis down: nothing is applied
    long_ago = MONDAY - timedelta(days=60)
    writer = Service(config, Store.from_url(config.redis.url, "dialguard:", 200), Journal(old_day))
    await writer.dnc_remove(NUMBER, "a mistake", long_ago)
    await writer.store.close()
    now_writer = Service(
        config, Store.from_url(config.redis.url, "dialguard:", 200), Journal(audit)
    )
    await now_writer.dnc_add("0611111111", "asked", MONDAY)
    await now_writer.store.close()

    positions: dict[Path, int] = {}
    at_start = journal_changes(audit, PENDING_DAYS, MONDAY, positions)
    newest = max(path.name for path in positions)
    [restored] = [path for path in old_day.glob("audit-*.jsonl")]
    (audit / restored.name).write_bytes(restored.read_bytes())
    assert journal_changes(audit, PENDING_DAYS, MONDAY, positions, newest) == []
    assert len(at_start) == 1
    # A file named after the newest at start is read whole, whatever its day.
    assert journal_changes(audit, PENDING_DAYS, MONDAY, {}, "") != []
