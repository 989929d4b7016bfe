"""Consents and contracts packed in Redis (store/packed.py) against a real Redis: every
field form an import takes reads back as the decision reads it, buckets stay listpacks
whatever Redis's limits, live changes still win over an imported version, and a list
kept in the layout of an earlier version is never silently ignored."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import redis.asyncio as aioredis

from dialguard import import_reading, importing
from dialguard.changes import Change, ChangeKind
from dialguard.import_files import BadImportFile, ConsentRow, ContractRow, read_header
from dialguard.import_halves import HalfFailed, Other
from dialguard.model import Contract, Sector
from dialguard.numbers import normalise
from dialguard.store import OldLayout, Store, loading
from dialguard.store.keys import Keys
from dialguard.store.loading import load
from dialguard.store.packed import SPLIT, STUB
from tests.redis_server import RedisServer
from tests.test_cli import CONSENT_HEADER, Cli, decision, ok, one_line_error

PREFIX = "dialguard:"
KEYS = Keys(PREFIX)
PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 1, 10, 30, tzinfo=PARIS)


@pytest.fixture
def cli(tmp_path: Path, clean_redis: RedisServer) -> Cli:
    return Cli(tmp_path, clean_redis.url)


@pytest.fixture
async def store(clean_redis: RedisServer) -> AsyncIterator[Store]:
    opened = Store.from_url(clean_redis.admin_url, PREFIX, 5000)
    yield opened
    await opened.close()


@contextmanager
def listpack_limits(server: RedisServer, entries: int, value: int) -> Iterator[None]:
    """This Redis configured to keep smaller hashes as listpacks, for the test."""
    client = redis.Redis.from_url(server.admin_url)
    saved = client.config_get("hash-max-listpack-*")
    client.config_set("hash-max-listpack-entries", entries)
    client.config_set("hash-max-listpack-value", value)
    try:
        yield
    finally:
        for name, setting in saved.items():
            client.config_set(str(name), str(setting))
        client.close()


async def packed_keys(client: aioredis.Redis, kind: str, version: str) -> dict[str, bytes]:
    """Every bucket of a version and its encoding."""
    base = KEYS.packed(kind, version)
    found: dict[str, bytes] = {}
    async for key in client.scan_iter(match=f"{base}*", count=1000):
        name = key.decode()[len(base) :]
        if name[:1].isdigit():
            found[name] = await client.object("encoding", key)
    return found


def consent(key: str, days: int, proof: str, principal: str = "ACME") -> ConsentRow:
    return ConsentRow(normalise("+" + key), principal, NOW - timedelta(days=days), None, proof)


# --- every field form, through the CLI -------------------------------------------------------


def test_an_import_of_consents_in_every_form_reads_back_as_written(cli: Cli) -> None:
    long_proof = "https://crm.example.com/consents/2026/09/01/" + "a" * 60
    lines = [
        ("0612345601", "ACME", "2026-09-01", "", "date; no expiry"),
        ("06 12 34 56 02", "ACME", "2026-09-01T12:30:00+02:00", "2027-09-01", "offset"),
        ("+33612345603", "ACME", "2026-09-01T10:30:00Z", "2027-03-01T08:00:00Z", "utc"),
        ("0033612345604", "ACME", "2026-09-01T12:30:00", "", "no offset: Paris time"),
        ("0612345605", "ACME", "2026-09-01T12:30:00.999+02:00", "", "milliseconds"),
        ("0612345606", "ACME", "2026-09-01", "", long_proof),
        ("0612345607", "ACME", "2026-09-01", "", "preuve signée é"),
        ("0612345608", "acme.fr", "2026-09-01", "", "another principal"),
        ("0612345609", "ACME", '"2026-09-01"', "", '"quoted, with a comma"'),
        ("0612345610", "ACME", " 2026-09-01 ", "", " spaces around "),
        ("0692123456", "ACME", "2026-09-01", "", "Réunion"),
        ("+4915112345678", "ACME", "2026-09-01", "", "German mobile"),
    ]
    body = "".join(",".join(fields) + "\n" for fields in lines)
    ok(cli("import", "consent", cli.file("c.csv", CONSENT_HEADER + body), "--replace"))
    expected = {
        "0612345601": ("2026-08-31T22:00:00+00:00", None),
        "06 12 34 56 02": ("2026-09-01T10:30:00+00:00", "2027-08-31T22:00:00+00:00"),
        "+33612345603": ("2026-09-01T10:30:00+00:00", "2027-03-01T08:00:00+00:00"),
        "0033612345604": ("2026-09-01T10:30:00+00:00", None),
        "0612345605": ("2026-09-01T10:30:00+00:00", None),  # kept to the second
    }
    for number, principal, _, _, proof in lines:
        if principal != "ACME":  # history reads the principals of the configuration
            continue
        # What Redis holds for the number now, as `audit history` shows it.
        events = map(json.loads, ok(cli("audit", "history", number, "--json")).out.splitlines())
        (held,) = [e for e in events if e.get("list") == "consent"]
        assert held["principal"] == principal
        assert held["proof_ref"] == proof.strip().strip('"'), number
        if number in expected:
            assert (held["given_at"], held["expires_at"]) == expected[number], number
    status = map(json.loads, ok(cli("lists", "status", "--json")).out.splitlines())
    (row,) = [row for row in status if row["list"] == "consent"]
    assert row["entries"] == len(lines)


# --- buckets: listpacks, split, overflow ------------------------------------------------------


async def test_buckets_split_before_they_outgrow_a_listpack(
    store: Store, redis_client: aioredis.Redis, clean_redis: RedisServer
) -> None:
    # 300 consents of one bucket (one thousand numbers), two principals: past the default
    # 128 entries, the bucket splits one digit down, and further where needed.
    rows = [consent(f"33612345{i:03d}", 30, f"p{i}") for i in range(0, 1000, 4)]
    rows += [consent(f"33612345{i:03d}", 30, f"q{i}", "OTHER") for i in range(0, 200, 4)]
    summary = await load(store.lists, "consent", rows, "replace")
    assert summary.size == len(rows)
    buckets = await packed_keys(redis_client, "consent", summary.version)
    assert buckets["333612345"] == b"listpack"
    assert await redis_client.hgetall(KEYS.packed("consent", summary.version) + "333612345") == {
        SPLIT.encode(): b"1"
    }
    assert set(buckets.values()) == {b"listpack"}
    assert {f"233612345{d}" for d in range(10)} <= set(buckets)  # ten a digit longer
    for row in rows[::7]:
        facts = await store.facts(row.number, row.principal, NOW, 30)
        assert facts.consent is not None and facts.consent.proof_ref == row.proof_ref
    absent = await store.facts(normalise("+33612345001"), "ACME", NOW, 30)
    assert absent.consent is None
    census = await store.lists.census("consent", summary.version)
    assert census.entries == len(rows) and census.bitmaps >= 1  # split buckets counted


async def test_buckets_follow_the_limits_of_this_redis(
    store: Store, redis_client: aioredis.Redis, clean_redis: RedisServer
) -> None:
    with listpack_limits(clean_redis, entries=8, value=24):
        rows = [consent(f"336123450{i:02d}", 30, f"p{i}") for i in range(40)]
        rows.append(consent("33612345099", 30, "a proof reference longer than 24 bytes"))
        summary = await load(store.lists, "consent", rows, "replace")
        buckets = await packed_keys(redis_client, "consent", summary.version)
        assert set(buckets.values()) == {b"listpack"}, buckets
        base = KEYS.packed("consent", summary.version)
        for name in buckets:
            assert await redis_client.hlen(base + name) <= 8
        # The long value: STUB in its bucket, the value in the overflow hash.
        overflow = await redis_client.hgetall(base + "x")
        assert list(overflow) == [b"33612345099|0"]
        for row in rows:
            facts = await store.facts(row.number, "ACME", NOW, 30)
            assert facts.consent is not None and facts.consent.proof_ref == row.proof_ref
        # An add merging into the split buckets, a shorter proof replacing the long one.
        newer = [consent("33612345099", 1, "short"), consent("33612345003", 60, "older")]
        await load(store.lists, "consent", newer, "add")
        assert await redis_client.hlen(base + "x") == 0
        facts = await store.facts(newer[0].number, "ACME", NOW, 30)
        assert facts.consent is not None and facts.consent.proof_ref == "short"
        facts = await store.facts(newer[1].number, "ACME", NOW, 30)
        assert facts.consent is not None and facts.consent.proof_ref == "p3"  # given later
        assert set((await packed_keys(redis_client, "consent", summary.version)).values()) == {
            b"listpack"
        }
    assert STUB == b"\x80"


async def test_an_import_written_in_parts_gives_what_one_write_gives(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "MAX_PACKED", 3)
    early, late = NOW - timedelta(days=40), NOW - timedelta(days=10)
    number = normalise("0612345678")
    rows = [
        ConsentRow(number, "ACME", late, None, "late"),
        *(consent(f"3361234500{i}", 30, f"p{i}") for i in range(5)),
        ConsentRow(number, "ACME", early, None, "early"),  # a later write, an older consent
    ]
    summary = await load(store.lists, "consent", rows, "replace", chunk=2)
    assert summary.size == 6
    facts = await store.facts(number, "ACME", NOW, 30)
    assert facts.consent is not None and facts.consent.proof_ref == "late"
    # Contracts: a pair's rows in several writes are its whole set, the first replacing.
    k1 = Contract("K-1", Sector.GENERAL, date(2025, 1, 1), None)
    k2 = Contract("K-2", Sector.CPF, date(2025, 1, 1), None)
    k3 = Contract("K-3", Sector.CPF, date(2025, 1, 1), None)
    await load(store.lists, "contract", [ContractRow(number, "ACME", k3)], "replace")
    spread = [ContractRow(number, "ACME", k1)]
    spread += [ContractRow(normalise(f"+3361234500{i}"), "ACME", k1) for i in range(4)]
    spread += [ContractRow(number, "ACME", k2)]
    await load(store.lists, "contract", spread, "add", chunk=2)
    assert (await store.facts(number, "ACME", NOW, 30)).contracts == (k1, k2)


async def version_contents(client: aioredis.Redis, kind: str, version: str) -> dict[str, Any]:
    """Every key of a version (its part after the version's base), with its encoding and
    contents: buckets and the overflow hash as fields in order, the index as a set."""
    base = KEYS.packed(kind, version)
    found: dict[str, Any] = {}
    async for key in client.scan_iter(match=f"{base}*", count=1000):
        name = key.decode()[len(base) :]
        if await client.type(key) == b"set":
            found[name] = await client.smembers(key)
        else:
            found[name] = (await client.object("encoding", key), await client.hgetall(key))
    return found


@pytest.mark.parametrize("seed", range(4))
async def test_a_build_written_by_plain_hsets_holds_what_the_write_script_writes(
    store: Store, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # A build is written once read, most buckets by one plain HSET each; the write script
    # takes the buckets HSET cannot write (a pair met twice, a value too long, more
    # entries than a listpack holds). Written row by row through the write script
    # instead (MAX_PACKED 1: every later write merges), the version is the same, key for
    # key, field for field, in the same order.
    rnd = random.Random(seed)
    numbers = [f"33612{rnd.randrange(10**6):06d}" for _ in range(300)]
    numbers += [f"33612999{i:03d}" for i in range(0, 1000, 5)]  # one bucket of 200
    rows: list[ConsentRow] = []
    for key in numbers:
        proof = "p" * rnd.choice([1, 8, 70]) if rnd.random() < 0.05 else f"p{len(rows)}"
        rows.append(consent(key, rnd.randrange(1, 90), proof, rnd.choice(["ACME", "BETA"])))
    rows += [consent(r.number.key, rnd.randrange(1, 90), "again", r.principal) for r in rows[:40]]
    rnd.shuffle(rows)
    contracts = [
        ContractRow(
            r.number,
            r.principal,
            Contract(f"K-{rnd.randrange(3)}", Sector.CPF, date(2025, 1, 1), None),
        )
        for r in rows
    ]

    async def written(chunk: int) -> list[tuple[int, dict[str, Any]]]:
        found = []
        for kind, entries in (("consent", rows), ("contract", contracts)):
            summary = await load(store.lists, kind, entries, "replace", chunk=chunk)
            found.append(
                (summary.size, await version_contents(redis_client, kind, summary.version))
            )
        return found

    plain = await written(5000)
    for _, contents in plain:
        # Not a hashtable anywhere; a split bucket met in each seed.
        assert {v[0] for k, v in contents.items() if k[:1].isdigit()} == {b"listpack"}
        assert any(k.startswith("2") for k in contents)
    facts = await store.facts(rows[0].number, rows[0].principal, NOW, 30)
    monkeypatch.setattr(loading, "MAX_PACKED", 1)
    assert await written(1) == plain
    facts = await store.facts(rows[0].number, rows[0].principal, NOW, 30)
    given = max(
        r.given_at for r in rows if r.number == rows[0].number and r.principal == rows[0].principal
    )
    assert facts.consent is not None and facts.consent.given_at == given


# --- live changes over an imported version -----------------------------------------------------


async def test_live_consents_and_withdrawals_over_an_imported_version(store: Store) -> None:
    rows = [consent(f"336123450{i:02d}", 30, f"file-{i}") for i in range(50)]
    await load(store.lists, "consent", rows, "replace")
    ms = int(NOW.timestamp() * 1000)
    withdrawn = Change(
        "w1", ms - 86_400_000, ChangeKind.CONSENT_WITHDRAW, rows[0].number.key, "ACME"
    )
    added = Change(
        "a1",
        ms,
        ChangeKind.CONSENT_ADD,
        rows[1].number.key,
        "ACME",
        given_ms=ms - 3_600_000,
        proof_ref="live",
    )
    await store.apply(withdrawn)
    await store.apply(added)
    facts = await asyncio.gather(*(store.facts(row.number, "ACME", NOW, 30) for row in rows[:3]))
    assert facts[0].withdrawn_at is not None and facts[0].consent is not None
    assert facts[0].withdrawn_at > facts[0].consent.given_at  # CONSENT_WITHDRAWN
    assert facts[1].consent is not None and facts[1].consent.proof_ref == "live"
    assert facts[2].consent is not None and facts[2].consent.proof_ref == "file-2"
    # The nightly --replace, made before the live consent: the live one still answers.
    await load(store.lists, "consent", rows, "replace")
    again = await store.facts(rows[1].number, "ACME", NOW, 30)
    assert again.consent is not None and again.consent.proof_ref == "live"


# --- the layout of earlier versions -----------------------------------------------------------


async def test_a_list_in_the_one_hash_layout_is_refused_until_replaced(
    store: Store, redis_client: aioredis.Redis
) -> None:
    summary = await load(store.lists, "consent", [consent("33612345678", 3, "p")], "replace")
    old = KEYS.one_hash("consent", summary.version)
    await redis_client.hset(old, "33612345679|ACME", "1790000000000||old")
    assert await store.lists.legacy_keys() == [old]
    with pytest.raises(OldLayout, match="--replace"):
        await load(store.lists, "consent", [consent("33612345670", 3, "p")], "add")
    await load(store.lists, "consent", [consent("33612345670", 3, "p")], "replace")
    assert await redis_client.exists(old) == 0
    assert await store.lists.legacy_keys() == []


def test_serve_and_imports_say_what_to_do_with_the_old_layout(
    cli: Cli, clean_redis: RedisServer
) -> None:
    first = cli.file("c.csv", CONSENT_HEADER + "0612345678,ACME,2026-09-01,,p\n")
    ok(cli("import", "consent", first, "--replace"))
    client = redis.Redis.from_url(clean_redis.admin_url)
    version = client.hget(KEYS.index, "consent")
    assert isinstance(version, bytes)
    client.hset(
        KEYS.one_hash("consent", version.decode()), "33612345679|ACME", "1790000000000||old"
    )
    client.close()
    second = cli.file("d.csv", CONSENT_HEADER + "0612345670,ACME,2026-09-01,,p\n")
    one_line_error(cli("import", "consent", second), 1, "layout of an earlier version", "--replace")
    assert decision(cli(*cli.check("0612345678"))) == ("ALLOW", "CONSENT")
    ok(cli("import", "consent", second, "--replace"))  # frees the old version whole
    assert decision(cli(*cli.check("0612345670"))) == ("ALLOW", "CONSENT")


# --- a file written while it is read -----------------------------------------------------------


async def test_a_file_written_while_read_keeps_the_later_row_and_a_refused_one_leaves_nothing(
    store: Store, redis_client: aioredis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes due every two rows (a build is written once read, but for one past
    # MAX_PACKED): a pair's rows land in different writes, each merged into the buckets
    # the earlier ones wrote, while the next rows are read.
    monkeypatch.setattr(loading, "MAX_PACKED", 2)
    monkeypatch.setattr(importing, "CHUNK_ROWS", 3)
    monkeypatch.setattr(import_reading, "BLOCK_BYTES", 120)  # two or three lines a chunk
    given = "2026-09-01T12:30:00+02:00"
    others = [f"06123450{i:02d},ACME,{given},,p{i}\n" for i in range(20)]
    body = [
        f"0612345678,ACME,{given},,first\n",
        f"0612345679,ACME,{given},,newer\n",
        *others,
        f"0612345678,ACME,{given},,same instant: the later row\n",
        "0612345679,ACME,2026-08-01T12:30:00+02:00,,older\n",
    ]
    path = tmp_path / "c.csv"
    path.write_text(CONSENT_HEADER + "".join(body), encoding="utf-8")

    def request(mode: str = "replace") -> importing.Request:
        return importing.Request("consent", path, mode, PARIS, None, "", False, None, 0)

    background: list[bool] = []
    write_packed = store.lists.write_packed

    async def counted(*args: Any, **kwargs: Any) -> tuple[int, int]:
        background.append(kwargs["in_flight"] == loading.WRITES_IN_FLIGHT)
        return await write_packed(*args, **kwargs)

    monkeypatch.setattr(store.lists, "write_packed", counted)
    outcome = await importing.run_import(request(), store)
    assert outcome.summary is not None and outcome.summary.size == 22
    assert background.count(True) >= 3  # written while read, not all at the end
    proofs = [
        (await store.facts(normalise(n), "ACME", NOW, 30)).consent
        for n in ("0612345678", "0612345679", "0612345019")
    ]
    assert [c.proof_ref if c else None for c in proofs] == [
        "same instant: the later row",
        "newer",
        "p19",
    ]
    # Contracts: the same id twice, the later row; a pair's contracts over two writes.
    contracts = ["0612345678,ACME,K-1,general,2025-01-01,\n"]
    contracts += [f"06123450{i:02d},ACME,K-{i},cpf,2025-01-01,\n" for i in range(6)]
    contracts += ["0612345678,ACME,K-2,cpf,2025-02-01,\n"]
    contracts += ["0612345678,ACME,K-1,general,2025-01-01,2025-12-31\n"]
    cpath = tmp_path / "k.csv"
    cpath.write_text(
        "number,principal,contract_id,sector,start,end\n" + "".join(contracts), encoding="utf-8"
    )
    crequest = importing.Request("contract", cpath, "replace", PARIS, None, "", False, None, 0)
    await importing.run_import(crequest, store)
    assert (await store.facts(normalise("0612345678"), "ACME", NOW, 30)).contracts == (
        Contract("K-1", Sector.GENERAL, date(2025, 1, 1), date(2025, 12, 31)),
        Contract("K-2", Sector.CPF, date(2025, 2, 1), None),
    )

    # A file refused at its last line, after writes went out: the build is freed whole
    # (no write left behind it) and the list in force is untouched.
    before = set(await redis_client.keys("*"))
    path.write_text(
        CONSENT_HEADER + "".join(others).replace("p", "q") + "0612345678,ACME,never,,x\n",
        encoding="utf-8",
    )
    with pytest.raises(importing.ImportFailed, match="1 bad line"):
        await importing.run_import(request(), store)
    assert set(await redis_client.keys("*")) == before
    facts = await store.facts(normalise("0612345019"), "ACME", NOW, 30)
    assert facts.consent is not None and facts.consent.proof_ref == "p19"


async def test_a_big_file_read_in_two_halves_loads_what_one_reading_loads(
    store: Store, redis_client: aioredis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second half read by another process (import_halves): a principal first met
    # there, bad lines in both halves, pairs with a row in each half (the consent given
    # last kept, the later row for the same instant), a last line without its break.
    given = "2026-09-01T12:30:00+02:00"
    first = [f"0612345{i:03d},ACME,{given},,a{i}\n" for i in range(300)]
    first[10] = "0612345010,ACME,never,,bad\n"
    first[20] = f"0612345020,ACME,{given},,newer in the first half\n".replace("12:30", "18:30")
    second = [f"0612346{i:03d},ACME,{given},,b{i}\n" for i in range(300)]
    second[5] = "0612345020,ACME,2026-09-01T12:00:00+02:00,,older in the second half\n"
    second[6] = f"0612345021,ACME,{given},,the later row\n"
    second[7] = "0612345022,ACME,2026-09-01,2026-01-01,bad: expires before\n"
    second[8] = f"0612346100,NEWP,{given},,new principal\n"
    second[9] = "é" * 5000 + "\n"
    first[50] = "é" * 6000 + "\n"  # the middle of the file in the first 300 lines
    second[-1] = second[-1].rstrip("\n")
    path = tmp_path / "c.csv"
    path.write_text(CONSENT_HEADER + "".join(first + second), encoding="utf-8")

    async def imported(halves: bool) -> tuple[Any, ...]:
        monkeypatch.setattr(importing, "_HALVES_BYTES", 1 if halves else 1 << 40)
        monkeypatch.setattr(importing, "_cores", lambda: 2)  # a one-core runner too
        rejects = tmp_path / f"rejects-{halves}.csv"
        request = importing.Request(
            "consent", path, "replace", PARIS, None, "", False, rejects, 100
        )
        outcome = await importing.run_import(request, store)
        assert outcome.summary is not None
        contents = await version_contents(redis_client, "consent", outcome.summary.version)
        facts = [
            (await store.facts(normalise(n), p, NOW, 30)).consent
            for n, p in (("0612345020", "ACME"), ("0612345021", "ACME"), ("0612346100", "NEWP"))
        ]
        return (
            outcome.check.rows,
            outcome.check.lines,
            outcome.rejected,
            rejects.read_text(encoding="utf-8"),
            outcome.summary.size,
            contents,
            [c.proof_ref if c else None for c in facts],
        )

    started: list[Other] = []

    class Counted(Other):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            started.append(self)

    monkeypatch.setattr(importing, "Other", Counted)
    halves = await imported(True)
    assert len(started) == 1  # the second half was read by another process
    assert halves[6] == ["newer in the first half", "the later row", "new principal"]
    numbers = [line.split(",")[0] for line in halves[3].splitlines()[1:]]
    assert numbers == ["12", "52", str(2 + 300 + 7), str(2 + 300 + 9)]  # too long: 52, 311
    assert halves == await imported(False)


async def test_an_importer_allowed_one_core_reads_with_one_process(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes on one core only take turns (taskset, a container's cpuset).
    monkeypatch.setattr(importing, "_HALVES_BYTES", 1)
    monkeypatch.setattr(importing, "_cores", lambda: 1)
    started: list[Any] = []
    monkeypatch.setattr(importing, "Other", lambda *args: started.append(args))
    given = "2026-09-01T12:30:00+02:00"
    path = tmp_path / "c.csv"
    path.write_text(
        CONSENT_HEADER + "".join(f"0612345{i:03d},ACME,{given},,a{i}\n" for i in range(400)),
        encoding="utf-8",
    )
    request = importing.Request("consent", path, "replace", PARIS, None, "", False, None, 0)
    outcome = await importing.run_import(request, store)
    assert outcome.check.rows == 400 and started == []


async def test_a_second_half_that_is_not_utf8_refuses_the_file_and_leaves_nothing(
    store: Store, redis_client: aioredis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importing, "_HALVES_BYTES", 1)
    monkeypatch.setattr(importing, "_cores", lambda: 2)
    given = "2026-09-01T12:30:00+02:00"
    lines = [f"0612345{i:03d},ACME,{given},,a{i}\n".encode() for i in range(400)]
    lines[350] = b"0612345350,ACME," + given.encode() + b",,caf\xe9\n"  # Latin-1
    path = tmp_path / "c.csv"
    path.write_bytes(CONSENT_HEADER.encode() + b"".join(lines))
    before = set(await redis_client.keys("*"))
    request = importing.Request("consent", path, "replace", PARIS, None, "", False, None, 0)
    with pytest.raises(BadImportFile, match=r"^not UTF-8 text"):
        await importing.run_import(request, store)
    left = set(await redis_client.keys("*")) - before
    assert all(b"principals" in key or b"lists:seq" in key for key in left), left


async def test_the_other_process_failing_is_one_line_for_the_import(tmp_path: Path) -> None:
    header = read_header("consent", CONSENT_HEADER)
    other = Other(tmp_path / "gone.csv", 10, header, "Europe/Paris", 64, {})

    async def no_id(principal: str) -> int:
        raise AssertionError(principal)

    try:
        with pytest.raises(HalfFailed, match="FileNotFoundError") as raised:
            for _ in range(2000):  # the process starts, then fails
                await other.answer(no_id)
                await asyncio.sleep(0.01)
        assert "\n" not in str(raised.value)
    finally:
        other.close()
