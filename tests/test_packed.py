"""The packed values of consents and contracts (store/packed.py): what goes in comes back,
to the second, and bytes no version wrote are refused rather than misread."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialguard.import_files import ms_exact
from dialguard.model import Consent, Contract, Sector
from dialguard.store.packed import (
    Gathered,
    bucket_name,
    merge_contract_values,
    pack_consent,
    pack_contract,
    unpack_consent,
    unpack_contracts,
)
from dialguard.store.resp import bulk

PARIS = ZoneInfo("Europe/Paris")
FIRST = datetime(1970, 1, 1, tzinfo=PARIS)  # the first instant an import accepts
LAST = datetime(2199, 12, 31, 23, 59, 59, 999000, tzinfo=PARIS)
DAY = 86_400


def seconds(moment: datetime) -> int:
    return int(moment.timestamp()) + DAY  # kept from a day before 1970


@pytest.mark.parametrize(
    ("given", "expires", "proof", "packed"),
    [
        (
            datetime(2026, 1, 1, tzinfo=UTC),
            None,
            "p",
            b"\x00" + seconds(datetime(2026, 1, 1, tzinfo=UTC)).to_bytes(4, "big") + b"p",
        ),
        (
            datetime(2026, 1, 1, 10, 0, 0, 999000, tzinfo=UTC),  # the millisecond dropped
            datetime(2029, 1, 1, tzinfo=UTC),
            "WEB-000000000001",
            b"\x01"
            + seconds(datetime(2026, 1, 1, 10, tzinfo=UTC)).to_bytes(4, "big")
            + seconds(datetime(2029, 1, 1, tzinfo=UTC)).to_bytes(4, "big")
            + b"WEB-000000000001",
        ),
        (
            FIRST,  # before 1970 in UTC: the bias keeps it positive
            None,
            "é",
            b"\x00" + (DAY - 3600).to_bytes(4, "big") + "é".encode(),
        ),
        (
            datetime(2150, 6, 1, tzinfo=UTC),  # past 2106: five bytes an instant
            datetime(2151, 6, 1, tzinfo=UTC),
            "x",
            b"\x03"
            + seconds(datetime(2150, 6, 1, tzinfo=UTC)).to_bytes(5, "big")
            + seconds(datetime(2151, 6, 1, tzinfo=UTC)).to_bytes(5, "big")
            + b"x",
        ),
    ],
)
def test_a_consent_packs_to_these_bytes(
    given: datetime, expires: datetime | None, proof: str, packed: bytes
) -> None:
    value = pack_consent(ms_exact(given), ms_exact(expires) if expires else 0, proof)
    assert value == packed
    back = unpack_consent(value)
    assert back.given_at == given.replace(microsecond=0)
    assert back.expires_at == (expires.replace(microsecond=0) if expires else None)
    assert back.proof_ref == proof


instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(PARIS)
).filter(lambda moment: FIRST <= moment <= LAST)
proofs = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="|"),
    min_size=1,
    max_size=200,
)


@settings(max_examples=500, deadline=None)
@given(given_at=instants, lasts=st.none() | st.integers(1, 10**10), proof=proofs)
def test_a_consent_round_trips_to_the_second(
    given_at: datetime, lasts: int | None, proof: str
) -> None:
    given_ms = ms_exact(given_at)
    expires_ms = given_ms + lasts if lasts else 0
    back = unpack_consent(pack_consent(given_ms, expires_ms, proof))
    assert back.given_at == datetime.fromtimestamp(given_ms // 1000, UTC)
    if lasts:
        assert back.expires_at == datetime.fromtimestamp(expires_ms // 1000, UTC)
        # Never later than it was: a consent lapses up to a second early, never late.
        assert back.expires_at is not None
        assert back.expires_at <= given_at.astimezone(UTC) + timedelta(milliseconds=lasts)
    else:
        assert back.expires_at is None
    assert back.proof_ref == proof
    # Never later than what was given: a withdrawal in the same second still beats it.
    assert back.given_at <= given_at


days = st.dates(min_value=date(1970, 1, 1), max_value=date(2199, 12, 31))
ids = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="|"),
    min_size=1,
    max_size=200,
)
contracts = st.builds(
    lambda ident, sector, start, length: Contract(
        ident, sector, start, start + timedelta(days=length) if length is not None else None
    ),
    ids,
    st.sampled_from(list(Sector)),
    days.filter(lambda d: d.year < 2190),
    st.none() | st.integers(0, 3000),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(contracts, min_size=1, max_size=5, unique_by=lambda c: c.contract_id))
def test_contracts_round_trip(items: list[Contract]) -> None:
    value = b"".join(pack_contract(c) for c in items)
    assert unpack_contracts(value) == tuple(items)


def test_a_contract_packs_to_these_bytes() -> None:
    ongoing = Contract("AB", Sector.ENERGY_RENOVATION, date(1970, 1, 2), None)
    assert pack_contract(ongoing) == b"\x01" + (1).to_bytes(3, "big") + b"\x02AB"
    ended = Contract("C", Sector.CPF, date(2026, 1, 1), date(2026, 12, 31))
    start = (date(2026, 1, 1) - date(1970, 1, 1)).days
    end = (date(2026, 12, 31) - date(1970, 1, 1)).days
    assert pack_contract(ended) == (
        bytes([3 | 8]) + start.to_bytes(3, "big") + end.to_bytes(3, "big") + b"\x01C"
    )
    long_id = "é" * 200  # 400 bytes: the length on two more bytes
    packed = pack_contract(Contract(long_id, Sector.GENERAL, date(2026, 1, 1), None))
    assert packed[4] == 255 and packed[5:7] == (400).to_bytes(2, "big")
    assert unpack_contracts(packed)[0].contract_id == long_id


def test_contracts_merge_by_id_the_later_replacing() -> None:
    a1 = Contract("A", Sector.GENERAL, date(2025, 1, 1), None)
    a2 = Contract("A", Sector.GENERAL, date(2025, 1, 1), date(2026, 1, 1))
    b = Contract("B", Sector.CPF, date(2025, 1, 1), None)
    merged = merge_contract_values(pack_contract(a1) + pack_contract(b), pack_contract(a2))
    assert unpack_contracts(merged) == (a2, b)


@pytest.mark.parametrize(
    "value",
    [
        b"garbage",
        b"\x00\x00\x00\x00\x01",  # no proof reference
        b"\x01\x00\x00\x00\x01\x00\x00\x00\x02",  # an expiry, no proof reference
        b"\x04\x00\x00\x00\x01p",  # a flag no version sets
    ],
)
def test_bytes_no_version_wrote_are_not_a_consent(value: bytes) -> None:
    with pytest.raises(ValueError):
        unpack_consent(value)


@pytest.mark.parametrize(
    "value",
    [
        b"\x07\x00\x00\x01\x01A",  # a sector no version has
        b"\x00\x00\x00\x01\x05AB",  # an id cut short
        b"\x00\x00",  # a contract cut short
        b"\x10\x00\x00\x01\x01A",  # a flag no version sets
    ],
)
def test_bytes_no_version_wrote_are_not_contracts(value: bytes) -> None:
    with pytest.raises((ValueError, IndexError)):
        unpack_contracts(value)


def test_unpacking_gives_what_the_rules_read() -> None:
    consent = unpack_consent(pack_consent(1_790_000_000_000, 0, "p"))
    assert consent == Consent(datetime.fromtimestamp(1_790_000_000, UTC), None, "p")


# --- buckets and the write commands ---------------------------------------------------------


def test_a_number_is_in_the_bucket_of_its_leading_digits_at_each_level() -> None:
    assert bucket_name(3, "33612345678") == "333612345"
    assert bucket_name(2, "33612345678") == "2336123456"
    assert bucket_name(0, "33612345678") == "033612345678"


def commands(gathered: Gathered) -> list[tuple[int, bytes]]:
    return list(gathered.writes())


def arguments_of(encoded: bytes) -> list[bytes]:
    """Bulk strings in wire format, back to their bytes (values may hold any byte)."""
    found, at = [], 0
    while at < len(encoded):
        assert encoded[at : at + 1] == b"$"
        end = encoded.index(b"\r\n", at)
        size = int(encoded[at + 1 : end])
        found.append(encoded[end + 2 : end + 2 + size])
        assert encoded[end + 2 + size : end + 4 + size] == b"\r\n"
        at = end + 4 + size
    return found


def groups_of(encoded: bytes) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """A write's groups: bucket -> its (field, value) pairs, in order."""
    arguments, groups, at = arguments_of(encoded), {}, 0
    while at < len(arguments):
        bucket, count = arguments[at], int(arguments[at + 1])
        assert bucket not in groups
        pairs = arguments[at + 2 : at + 2 + 2 * count]
        groups[bucket] = list(zip(pairs[::2], pairs[1::2], strict=True))
        at += 2 + 2 * count
    return groups


def test_entries_go_out_grouped_by_bucket_in_file_order() -> None:
    gathered = Gathered("consent")
    one = pack_consent(1_790_000_000_000, 0, "p1")
    two = pack_consent(1_790_000_000_000, 0, "p2")
    other = pack_consent(1_790_000_000_000, 0, "p3")
    gathered.add("33612345678", 0, one)
    gathered.add("33612346000", 0, other)
    gathered.add("33612345001", 2, two)
    (sent,) = commands(gathered)
    assert sent == (
        10,
        bulk(b"33612345")
        + bulk(b"2")
        + bulk(b"678")
        + bulk(one)
        + bulk(b"2001")  # principal 2, the number's last digits 001
        + bulk(two)
        + bulk(b"33612346")
        + bulk(b"1")
        + bulk(b"0")
        + bulk(other),
    )
    taken = gathered.take()
    assert len(taken) == 3 and commands(taken) == [sent]
    assert len(gathered) == 0 and commands(gathered) == []


def test_a_bucket_goes_out_in_one_write_whatever_the_order_of_the_rows() -> None:
    gathered = Gathered("consent")
    value = pack_consent(1_790_000_000_000, 0, "p")
    numbers = [*range(0, 10**8, 9973), *range(5, 10**8, 19_991)]
    rows = [(f"336{n:08d}", "ACME", 1_790_000_000_000, 0, "p") for n in numbers]
    gathered.add_consents(rows, {"ACME": 0})
    sent = commands(gathered)
    groups = [groups_of(arguments) for _, arguments in sent]
    assert len(sent) > 1 and sum(len(pairs) for g in groups for pairs in g.values()) == len(rows)
    for one, other in itertools.pairwise(groups):
        assert not one.keys() & other.keys()  # a bucket in one write only
    expected: dict[bytes, list[bytes]] = {}
    for n in numbers:  # each bucket's entries in the order of the rows
        expected.setdefault(b"336%05d" % (n // 1000), []).append(b"%d" % (n % 1000))
    got = {bucket: [f for f, _ in pairs] for g in groups for bucket, pairs in g.items()}
    assert got == expected
    assert bulk(value) in sent[0][1]
