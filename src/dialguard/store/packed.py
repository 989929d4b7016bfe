"""Consents and contracts packed into small hashes (pure: no I/O).

A consent or contract is kept per number and principal, in a hash of the numbers that
share every digit but the last TOP_LEVEL ("a bucket"): the field is the principal's id
and the number's last digits as one integer (Redis stores it as a 1-4 byte integer), the
value a few packed bytes. Small hashes stay in Redis's listpack encoding, ~30 bytes an
entry where a hash field `number|principal` and a text value cost ~120 (docs/data-model.md
gives the figures).

- A bucket never holds more than the listpack's entry limit (`hash-max-listpack-entries`,
  and at most MAX_ENTRIES): past it Redis would turn it silently into a hashtable of
  ~100 bytes an entry, and a lookup in a long listpack is a linear scan. A bucket that
  would grow past it is **split** into ten buckets one digit longer, and keeps only the
  SPLIT field to say so; a lookup walks down from the top bucket (one HMGET per level).
- A value longer than the listpack's value limit (`hash-max-listpack-value`, 64 bytes by
  default: a consent with a proof reference over ~50 characters, a pair with several
  contracts) is kept whole in the version's overflow hash, the bucket holding STUB.

Values (big-endian; instants in whole seconds since 1969-12-31, dates in days since
1970-01-01):

- consent: a flags byte (EXPIRES: an expiry follows; WIDE: instants on 5 bytes, for
  those after 2106), given-at, [expires-at], then the proof reference (UTF-8).
- contracts of a pair, one after the other: a flags byte (the sector's index in
  SECTORS, HAS_END), start (3 bytes), [end (3 bytes)], the id's length (1 byte; LONG_ID:
  on the next two), the id (UTF-8).

The Lua side (the write script in store/lists.py, the lookup in store/facts.py) reads
these constants from LUA_PACKED.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dialguard.import_files import NOT_AN_INSTANT, ConsentEntry, ContractEntry, FastRows
from dialguard.model import Consent, Contract, Sector
from dialguard.store.resp import bulk

__all__ = [
    "LUA_PACKED",
    "MAX_ENTRIES",
    "SECTORS",
    "SPLIT",
    "STUB",
    "TOP_LEVEL",
    "Gathered",
    "bucket_name",
    "consent_seconds",
    "pack_consent",
    "pack_contract",
    "pack_contract_fields",
    "unpack_consent",
    "unpack_contracts",
]

# A top bucket holds 10**TOP_LEVEL numbers: at ten million French mobile consents (5 %
# of the 200 M numbers of 06 and 07), ~50 entries a bucket, ~200,000 buckets.
TOP_LEVEL = 3
# Entries a bucket holds at most, whatever Redis allows: a lookup scans the listpack
# (~7 ns an entry), and Redis's default (128) keeps it under a microsecond.
MAX_ENTRIES = 128
# Redis's defaults, used when CONFIG GET is refused (the ACL of docs/operations.md).
DEFAULT_ENTRIES = 128
DEFAULT_VALUE_BYTES = 64
SPLIT = "s"  # the one field of a bucket that was split
STUB = b"\x80"  # the value of an entry kept whole in the overflow hash

SECTORS = tuple(Sector)
_SECTOR_INDEX = {sector: i for i, sector in enumerate(SECTORS)}
EXPIRES, WIDE = 1, 2
HAS_END = 8
LONG_ID = 255  # an id's length byte: the length is on the next two
_NARROW = 1 << 32  # seconds that fit 4 bytes: up to 2106-02-06
# Instants are kept from a day before 1970: midnight of 1970-01-01 in Paris (the first
# instant imports accept) is before 1970 in UTC.
_BIAS_S = 86_400
_GIVEN = struct.Struct(">BI")
_GIVEN_EXPIRES = struct.Struct(">BII")
_DAYS = struct.Struct(">I")  # the last three bytes: a day
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
# The last second a datetime holds (9999-12-31T23:59:59): a 5-byte instant may be later.
_LAST_S = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)

LUA_PACKED = (
    f"local TOP, SPLIT, STUB = {TOP_LEVEL}, '{SPLIT}', '\\128'\n"
    f"local EXPIRES, WIDE, HAS_END, LONG_ID = {EXPIRES}, {WIDE}, {HAS_END}, {LONG_ID}\n"
)


def bucket_name(level: int, number_key: str) -> str:
    """The bucket (its key's last part) holding `number_key` at `level`: the level's
    digit, then every digit of the number but the last `level`."""
    return f"{level}{number_key[: len(number_key) - level]}"


# --- values -----------------------------------------------------------------------------


def pack_consent(given_ms: int, expires_ms: int, proof_ref: str) -> bytes:
    """A consent's value. Instants are kept to the second, rounded down: a consent then
    reads as given (and expiring) up to a second earlier, never later."""
    given = given_ms // 1000 + _BIAS_S
    expires = expires_ms // 1000 + _BIAS_S
    if given < _NARROW and expires < _NARROW:
        flags, width = 0, 4
    else:
        flags, width = WIDE, 5
    head = given.to_bytes(width, "big")
    if expires_ms:
        flags |= EXPIRES
        head += expires.to_bytes(width, "big")
    return bytes((flags,)) + head + proof_ref.encode("utf-8")


def unpack_consent(value: bytes) -> Consent:
    """ValueError for bytes no version of pack_consent wrote (a value set by hand)."""
    given, expires, proof = _consent_parts(value)
    return Consent(
        given_at=_EPOCH + timedelta(seconds=given),
        expires_at=None if expires is None else _EPOCH + timedelta(seconds=expires),
        proof_ref=proof,
    )


def consent_seconds(value: bytes) -> tuple[int, int | None]:
    """A consent's given-at and expires-at (None: no expiry) in whole seconds since 1970
    (UTC), without the datetimes: unpack_consent's instants, failing where it fails."""
    given, expires, _ = _consent_parts(value)
    return given, expires


def _consent_parts(value: bytes) -> tuple[int, int | None, str]:
    flags = value[0]
    width = 5 if flags & WIDE else 4
    if flags & ~(EXPIRES | WIDE) or len(value) <= 1 + width * (1 + (flags & EXPIRES)):
        raise ValueError(f"not a packed consent: {value[:16]!r}")
    given = int.from_bytes(value[1 : 1 + width], "big") - _BIAS_S
    at = 1 + width
    expires = None
    if flags & EXPIRES:
        expires = int.from_bytes(value[at : at + width], "big") - _BIAS_S
        at += width
    if given > _LAST_S or (expires is not None and expires > _LAST_S):
        raise OverflowError(f"a consent's instant after the year 9999: {value[:16]!r}")
    return given, expires, value[at:].decode("utf-8")


def pack_contract(contract: Contract) -> bytes:
    """One contract of a pair's value."""
    return pack_contract_fields(contract.contract_id, contract.sector, contract.start, contract.end)


def pack_contract_fields(contract_id: str, sector: Sector, start: date, end: date | None) -> bytes:
    ident = contract_id.encode("utf-8")
    flags = _SECTOR_INDEX[sector]
    days = _DAYS.pack(start.toordinal() - _EPOCH_DAY)[1:]
    if end is not None:
        flags |= HAS_END
        days += _DAYS.pack(end.toordinal() - _EPOCH_DAY)[1:]
    if len(ident) < LONG_ID:
        return bytes((flags, *days, len(ident))) + ident
    # 200 characters of UTF-8 may take up to 800 bytes.
    return bytes((flags, *days, LONG_ID)) + len(ident).to_bytes(2, "big") + ident


def unpack_contracts(value: bytes) -> tuple[Contract, ...]:
    """ValueError for bytes no version of pack_contract wrote (a value set by hand)."""
    found: list[Contract] = []
    at = 0
    while at < len(value):
        flags = value[at]
        if flags & ~(HAS_END | 7) or flags & 7 >= len(SECTORS) or len(value) < at + 5:
            raise ValueError(f"not packed contracts: {value[:16]!r}")
        start = date.fromordinal(_EPOCH_DAY + int.from_bytes(value[at + 1 : at + 4], "big"))
        at += 4
        end = None
        if flags & HAS_END:
            end = date.fromordinal(_EPOCH_DAY + int.from_bytes(value[at : at + 3], "big"))
            at += 3
        size, at = _id_size(value, at)
        if at + size > len(value):
            raise ValueError(f"not packed contracts: {value[:16]!r}")
        ident = value[at : at + size].decode("utf-8")
        at += size
        found.append(Contract(ident, SECTORS[flags & 7], start, end))
    return tuple(found)


def _id_size(value: bytes, at: int) -> tuple[int, int]:
    """The length of the id whose length starts at `at`, and where the id starts."""
    if value[at] < LONG_ID:
        return value[at], at + 1
    return int.from_bytes(value[at + 1 : at + 3], "big"), at + 3


def _contract_items(value: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(id, item bytes) of each contract of a value."""
    at = 0
    while at < len(value):
        size, ident = _id_size(value, at + (7 if value[at] & HAS_END else 4))
        yield value[ident : ident + size], value[at : ident + size]
        at = ident + size


def merge_contract_values(old: bytes, new: bytes) -> bytes:
    """`new`'s contracts added to `old`'s: one with the same id replaces it."""
    items = dict(_contract_items(old))
    items.update(_contract_items(new))
    return b"".join(items.values())


# --- gathering an import ------------------------------------------------------------------

# How the write script merges the entries of a pair (one per field of a bucket): M: the
# consent given last; R: the pair's contracts replaced by the first row of the pair a
# write meets, the next ones added; A: added to what is stored (a contract with the same
# id replaced).
MERGE, REPLACE, ADD = b"M", b"R", b"A"
# Work per write script command: ~1 ms of Redis, lookups going on between commands. An
# entry costs ~0.5 µs (grouped, written), a bucket a few µs more (three commands).
_WRITE_WEIGHT = 1_500
_BUCKET_WEIGHT = 4
# A bucket merged into one already written costs more (five commands, its entries read
# and compared): measured ~3 times a new one.
_MERGED_BUCKET_WEIGHT = 12
# Entries a batch of plain HSETs carries (Gathered.hsets): ~1 ms of Redis (~0.35 µs an
# entry), replies read a batch at a time.
_HSET_BATCH = 3_000


class Gathered:
    """An import's consents or contracts, gathered by bucket then written in the fewest
    commands (pure: the commands are bytes in Redis's wire format).

    Each bucket's entries are kept in file order as their field and value in wire format,
    one buffer a bucket. A build's buckets are all new: most are written by one plain
    `HSET` each (`hsets`), ten times less Redis work than the write script; the others
    (more entries than a listpack holds, a value longer than it keeps, a pair met twice)
    and every write into buckets written before go through the write script
    (store/lists.py, `writes`), which keeps one entry per pair (the consent given last; a
    pair's contracts together), and splits or spills what a listpack cannot hold.

    It is also the import's Sink (import_files.Sink): a file's plain lines are checked
    and packed here in one loop, `gather_consents` and `gather_contracts`, for the
    principals `name`d (their ids) so far."""

    def __init__(self, kind: str, value_limit: int = DEFAULT_VALUE_BYTES) -> None:
        if kind not in ("consent", "contract"):
            raise ValueError(kind)
        self.kind = kind
        self.value_limit = value_limit
        self.entries = 0  # gathered since the last take()
        self.ids: dict[str, int] = {}  # principals named so far
        self._tables: dict[int, dict[bytes, bytes]] = {}
        self._named: dict[str, dict[str, bytes]] = {}  # principal -> last digits -> field
        self._days: dict[str, bytes] = {}  # "YYYY-MM-DD" -> 3 bytes, b"" if not a date
        self._empty()

    def _empty(self) -> None:
        self._parts: list[bytearray] = []  # a bucket's fields and values
        self._counts = array("I")  # its entries
        self._names: list[bytes] = []  # its name (the number's digits but the last three)
        self._index: dict[bytes, int] = {}  # name -> its part
        self._heads: dict[str, int] = {}  # six NSN digits (a plain line's) -> its part
        self._long: set[int] = set()  # parts with a value over value_limit

    def __len__(self) -> int:
        return self.entries

    @property
    def buckets(self) -> int:
        return len(self._parts)

    def take(self) -> Gathered:
        """What is gathered, to write while more is gathered here (this one empty again)."""
        taken = Gathered(self.kind, self.value_limit)
        for name in ("_parts", "_counts", "_names", "_index", "_heads", "_long", "entries"):
            setattr(taken, name, getattr(self, name))
        self._empty()
        self.entries = 0
        return taken

    def states(
        self, buckets: int
    ) -> Iterator[tuple[list[bytes], array[int], list[bytearray], list[int], int]]:
        """What is gathered, `buckets` at a time, to hand to another process (`extend`),
        let go of as it goes (the receiver holds one piece more, not all of it twice)."""
        names, counts, parts, long = self._names, self._counts, self._parts, self._long
        self._empty()
        self.entries = 0
        for start in range(0, len(parts), buckets):
            stop = min(start + buckets, len(parts))
            piece = parts[start:stop]
            parts[start:stop] = [bytearray()] * (stop - start)
            longs = [at - start for at in range(start, stop) if at in long]
            entries = sum(counts[start:stop])
            yield names[start:stop], counts[start:stop], piece, longs, entries

    def extend(
        self, state: tuple[list[bytes], array[int], list[bytearray], list[int], int]
    ) -> None:
        """Another Gathered's entries (a piece of its `states`) after these: in a bucket, they
        come later (a file's second half after its first)."""
        names, counts, parts, long, entries = state
        longs = set(long)
        for at, name in enumerate(names):
            part = self._part(name)
            self._parts[part] += parts[at]
            self._counts[part] += counts[at]
            if at in longs:
                self._long.add(part)
        self.entries += entries

    def _fields_of(self, principal_id: int) -> dict[bytes, bytes]:
        """A principal's fields by the number's last digits, encoded once."""
        table = self._tables.get(principal_id)
        if table is None:
            table = self._tables[principal_id] = {
                b"%0*d" % (TOP_LEVEL, offset): bulk(b"%d" % (principal_id * _TOP_SPAN + offset))
                for offset in range(_TOP_SPAN)
            }
        return table

    def _part(self, name: bytes) -> int:
        """The part of a bucket, new or not."""
        part = self._index.get(name)
        if part is None:
            part = self._index[name] = len(self._parts)
            self._parts.append(bytearray())
            self._counts.append(0)
            self._names.append(name)
        return part

    # --- the Sink of an import --------------------------------------------------------------

    def name(self, principal: str, principal_id: int) -> None:
        """The id of a principal the file names (asked of Redis by the loader)."""
        self.ids[principal] = principal_id
        table = self._fields_of(principal_id)
        self._named[principal] = {key.decode(): field for key, field in table.items()}

    def knows(self, principal: str) -> bool:
        return principal in self._named

    def add_entry(self, entry: Any) -> None:
        """One row of the general path (its principal named)."""
        if self.kind == "consent":
            self.add_consents([entry], self.ids)
        else:
            self.add_contracts([entry], self.ids)

    def _head(self, head: str, plain: FastRows) -> int:
        """The part of the numbers of an NSN's first six digits."""
        part = self._heads[head] = self._part((plain.code(head) + head).encode())
        return part

    def gather_consents(self, found: list[Any], start: int, plain: FastRows) -> int:
        """Check and pack the plain consent lines of a block (FastRows.consent_lines'
        groups) from `start`, as FastRows.consents then add_consents would: the import's
        inner loop. Stops at the first line it leaves to the general path (not plain, an
        instant the general path refuses or must word, a principal not named yet): its
        index, or len(found)."""
        parts, counts, named, heads = self._parts, self._counts, self._named, self._heads
        clocks, midnights, instant = plain.clocks, plain.midnights, plain.instant
        head_of, both_of, sizes, crlf, join = (
            _GIVEN.pack,
            _GIVEN_EXPIRES.pack,
            _SIZES,
            b"\r\n",
            b"".join,
        )
        bias, narrow, invalid, expiring = _BIAS_S, _NARROW, NOT_AN_INSTANT, EXPIRES
        vlimit = self.value_limit
        at = start
        for at in range(start, len(found)):
            head, tail, principal, day, clock, offset, until, until_clock, until_offset, proof = (
                found[at]
            )
            fields = named.get(principal)
            if fields is None or not head:
                break
            if clock:  # the given instant inline: every line has its own second
                seconds = clocks.get(clock)
                days = midnights.get(offset)
                midnight = days.get(day) if days is not None else None
                if seconds is None or midnight is None:
                    given_ms = instant(day, clock, offset)
                elif seconds < 0 or midnight == invalid:
                    break
                else:
                    given_ms = midnight + seconds * 1000
            else:
                given_ms = instant(day, "", "")
            if given_ms == invalid:
                break
            given = given_ms // 1000 + bias
            if until:
                expires_ms = instant(until, until_clock, until_offset)
                if expires_ms == invalid or expires_ms <= given_ms:
                    break
                expires = expires_ms // 1000 + bias
                if given < narrow and expires < narrow:
                    value = both_of(expiring, given, expires)
                else:
                    value = pack_consent(given_ms, expires_ms, "")
            elif given < narrow:
                value = head_of(0, given)
            else:
                value = pack_consent(given_ms, 0, "")
            ref = proof.encode()
            part = heads.get(head)
            if part is None:
                part = self._head(head, plain)
            size = len(value) + len(ref)
            if size > vlimit:
                self._long.add(part)
            parts[part] += join((fields[tail], sizes[size], value, ref, crlf))
            counts[part] += 1
        else:
            at = len(found)
        self.entries += at - start
        return at

    def gather_contracts(self, found: list[Any], start: int, plain: FastRows) -> int:
        """As gather_consents, for FastRows.contract_lines."""
        parts, counts, named, heads = self._parts, self._counts, self._named, self._heads
        days, sizes, crlf, flags_of, join = self._days, _SIZES, b"\r\n", _SECTOR_FLAGS, b"".join
        vlimit = self.value_limit
        at = start
        for at in range(start, len(found)):
            head, tail, principal, contract_id, sector, start_day, end_day = found[at]
            fields = named.get(principal)
            if fields is None or not head:
                break
            begin = days.get(start_day)
            if begin is None:
                begin = self._day(start_day, plain)
            if not begin:
                break
            ident = contract_id.encode()
            if end_day:
                end = days.get(end_day)
                if end is None:
                    end = self._day(end_day, plain)
                if not end or end < begin:  # three bytes, big-endian: compared as days
                    break
                value = b"%c%b%b%c" % (flags_of[sector] | HAS_END, begin, end, len(ident))
            else:
                value = b"%c%b%c" % (flags_of[sector], begin, len(ident))
            part = heads.get(head)
            if part is None:
                part = self._head(head, plain)
            size = len(value) + len(ident)
            if size > vlimit:
                self._long.add(part)
            parts[part] += join((fields[tail], sizes[size], value, ident, crlf))
            counts[part] += 1
        else:
            at = len(found)
        self.entries += at - start
        return at

    def _day(self, value: str, plain: FastRows) -> bytes:
        day = plain.day(value)
        packed = b"" if day is None else _DAYS.pack(day.toordinal() - _EPOCH_DAY)[1:]
        if len(self._days) >= _CACHED_DAYS:
            self._days.clear()
        self._days[value] = packed
        return packed

    # --- entries one by one -------------------------------------------------------------------

    def add_consents(self, rows: Iterable[ConsentEntry], ids: Mapping[str, int]) -> None:
        """Gather consents (every principal in `ids`)."""
        tables = {principal: self._fields_of(i) for principal, i in ids.items()}
        for key, principal, given_ms, expires_ms, proof_ref in rows:
            number = key.encode()
            value = pack_consent(given_ms, expires_ms, proof_ref)
            self._add(number, tables[principal][number[-TOP_LEVEL:]], value)

    def add_contracts(self, rows: Iterable[ContractEntry], ids: Mapping[str, int]) -> None:
        """Gather contracts (every principal in `ids`), one row one contract."""
        tables = {principal: self._fields_of(i) for principal, i in ids.items()}
        for key, principal, contract_id, sector, start, end in rows:
            number = key.encode()
            value = pack_contract_fields(contract_id, sector, start, end)
            self._add(number, tables[principal][number[-TOP_LEVEL:]], value)

    def add(self, number_key: str, principal_id: int, value: bytes) -> None:
        """One entry (tests, small programs)."""
        number = number_key.encode()
        self._add(number, self._fields_of(principal_id)[number[-TOP_LEVEL:]], value)

    def _add(self, number: bytes, field: bytes, value: bytes) -> None:
        part = self._part(number[:-TOP_LEVEL])
        if len(value) > self.value_limit:
            self._long.add(part)
        self._parts[part] += field + bulk(value)
        self._counts[part] += 1
        self.entries += 1

    # --- writing --------------------------------------------------------------------------

    def plain(self, entry_limit: int) -> list[int]:
        """The parts a plain HSET can write into a new bucket: within the listpack's
        limits (a pair met twice is found by HSET's reply: fewer fields new)."""
        long = self._long
        return [
            part
            for part, count in enumerate(self._counts)
            if 0 < count <= entry_limit and part not in long
        ]

    def hsets(self, prefix: bytes, parts: list[int]) -> Iterator[tuple[list[int], bytes]]:
        """HSET commands writing `parts` into new buckets (`prefix`: a bucket's key but
        its name), a few thousand entries a batch: (the parts of a batch, one HSET each
        in order, then one SADD of their names to `index`)."""
        names, counts, data = self._names, self._counts, self._parts
        batch: list[int] = []
        pending: list[bytes | bytearray] = []
        entries = 0
        for part in parts:
            count, key = counts[part], prefix + names[part]
            pending.append(b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n" % (2 + 2 * count, len(key), key))
            pending.append(data[part])
            batch.append(part)
            entries += count
            if entries >= _HSET_BATCH:
                yield batch, b"".join(pending)
                batch, pending, entries = [], [], 0
        if batch:
            yield batch, b"".join(pending)

    def names(self, parts: Iterable[int], top: bool = True) -> list[bytes]:
        """The names of parts' buckets: with their level's digit (bucket_name's, the
        version's index keeps them so), or without (`top` False)."""
        level = b"%d" % TOP_LEVEL if top else b""
        return [level + self._names[part] for part in parts]

    def count(self, part: int) -> int:
        return self._counts[part]

    def writes(
        self, merging: bool = False, parts: Iterable[int] | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """The write script's groups (bucket, how many entries, then each entry's field
        and value), whole buckets, ~_WRITE_WEIGHT a command: (how many arguments, the
        bytes). `merging`: into buckets written before. `parts`: these only (all by
        default)."""
        bucket_weight = _MERGED_BUCKET_WEIGHT if merging else _BUCKET_WEIGHT
        names, counts, data = self._names, self._counts, self._parts
        pending: list[bytes | bytearray] = []
        arguments = weight = 0
        for part in range(len(data)) if parts is None else parts:
            count = counts[part]
            if not count:
                continue
            pending += (bulk(names[part]), bulk(b"%d" % count), data[part])
            arguments += 2 + 2 * count
            weight += count + bucket_weight
            if weight >= _WRITE_WEIGHT:
                yield arguments, b"".join(pending)
                pending, arguments, weight = [], 0, 0
        if pending:
            yield arguments, b"".join(pending)


_TOP_SPAN = 10**TOP_LEVEL
# The wire format's length line of a value, by length (a plain line's values are short).
_SIZES = [b"$%d\r\n" % size for size in range(512)]
_SECTOR_FLAGS = {sector.value: i for i, sector in enumerate(SECTORS)}
# Caches of the plain lines' dates; past this many they start again.
_CACHED_DAYS = 65_536
