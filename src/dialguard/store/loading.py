"""Load validated rows into Redis: a full replacement is built aside and swapped in whole;
an `add` or `remove` file changes the list in force.

The caller streams rows in chunks (`feed`) and ends with `commit` or `abort`. Nothing a
build wrote is visible before `commit`; `abort` (or a crash, cleaned up by the next import
of the same kind) leaves the list in force untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from dialguard.import_files import Chunk, consent_entry, contract_entry
from dialguard.store.buckets import INTSET_LIMIT, MAX_GATHERED, Buckets
from dialguard.store.errors import OldLayout
from dialguard.store.keys import CLEAR, HASH_KINDS, LISTED
from dialguard.store.lists import Lists
from dialguard.store.packed import (
    DEFAULT_ENTRIES,
    DEFAULT_VALUE_BYTES,
    Gathered,
)

__all__ = ["LIST_OF_KIND", "MODES", "Loader", "Summary", "load"]

MODES = ("replace", "add", "remove")
# Import kind -> the list it feeds.
LIST_OF_KIND = {"dnc": "dnc", "bloctel": "optout", "consent": "consent", "contract": "contract"}
# A build of consents or contracts (--replace) is written once the file is read, each
# bucket by one plain HSET when it can be (Gathered.hsets): ~0.35 µs of Redis an entry,
# where writing while reading (merging into the buckets earlier writes made, through the
# write script) cost Redis ten times that, more than it saved by overlapping the reading.
# It is written earlier only past MAX_PACKED entries or MAX_BUCKETS buckets gathered (the
# importer's memory: ~45 bytes an entry, ~250 a bucket), the later writes merged.
# A merge into the list in force (an `add` file) is written while the file is read: a
# write is due when what is gathered reaches what is left to read (estimated from the
# file's size and position), so what is left once the file is read is small
# (MIN_PACKED_WRITE at most).
MIN_PACKED_WRITE = 250_000
MAX_PACKED = 12_000_000
MAX_BUCKETS = 1_000_000
# Commands of a write in flight: the importer lets them go out only between chunks
# (~20 ms of reading), and Redis takes ~1 ms a command; two would leave it idle.
WRITES_IN_FLIGHT = 32


@dataclass
class Summary:
    kind: str
    mode: str
    rows: int = 0  # valid rows fed
    changed: int = 0  # entries added (or, for `remove`, removed)
    version: str = ""
    size: int = 0  # entries in the list (or the result set) afterwards
    stale_versions: list[str] = field(default_factory=list)
    result_sets: int = 0  # registry result sets in force afterwards (bloctel imports)

    @property
    def unchanged(self) -> int:
        """Rows that changed nothing: repeated in the file, already there (or, for
        `remove`, not there), or an older consent than the one stored."""
        return self.rows - self.changed


class Loader:
    def __init__(
        self,
        lists: Lists,
        kind: str,
        mode: str,
        *,
        source: str,
        now: datetime,
        checked_on: date | None = None,
        ref: str = "",
        intset_limit: int = INTSET_LIMIT,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}")
        if mode == "remove" and kind != "dnc":
            raise ValueError("only the do-not-call list takes `remove` files")
        if kind == "bloctel" and checked_on is None:
            raise ValueError("a registry result set needs its check date")
        self._lists = lists
        self.kind = kind
        self.list = LIST_OF_KIND[kind]
        self.mode = mode
        self._source = source
        self._now = now
        self._checked_on = checked_on
        self._ref = ref
        self._limit = intset_limit
        self._lock_version = ""
        self.target = ""  # the version written to
        self.building = False  # True: a new version, invisible until commit
        self._previous: tuple[str, ...] = ()
        self._meta: Any = None
        self._swapped = False
        # Dense lists gather numbers per bucket and write them out in bulk.
        self._gathered = {"dnc": Buckets(), LISTED: Buckets(), CLEAR: Buckets()}
        self._counts = {"changed": 0, "rows": 0, "listed": 0, "clear": 0, "removed": 0, "new": 0}
        # Consents and contracts: packed per bucket (store/packed.py).
        self._limits = (DEFAULT_ENTRIES, DEFAULT_VALUE_BYTES)
        self._packed = Gathered(self.list if self.list in HASH_KINDS else "consent")
        self._writing: asyncio.Future[None] | None = None  # a part being written
        self._to_read = -1  # rows of the file left to read, estimated (-1: not a file)
        self._merged = False  # a part was written before: the next ones merge into it

    async def open(self) -> None:
        self._limit = await self._lists.intset_limit(self._limit)
        if self.list in HASH_KINDS:
            self._limits = await self._lists.listpack_limits()
            self._packed = Gathered(self.list, self._limits[1])
        self._lock_version = await self._lists.acquire(self.list)
        current = await self._lists.current(self.list)
        self._previous, self._meta = current.versions, current.meta
        in_place = self.mode != "replace" and self.list != "optout" and current.versions
        if in_place and self.list in HASH_KINDS:
            old = [k for k in await self._lists.legacy_keys() if k.endswith(current.versions[0])]
            if old:
                await self._lists.release(self.list, self._lock_version)
                raise OldLayout(
                    f"the {self.list} list in force is kept in the layout of an earlier"
                    f" version ({old[0]}): load it whole with --replace first"
                    " (docs/data-model.md, Upgrading)"
                )
        if in_place:
            self.target = current.versions[0]
        elif self.mode == "remove":
            self.target = ""  # nothing imported to remove from; live entries still go
        else:
            self.target, self.building = self._lock_version, True

    def reading(self, position: int, size: int) -> None:
        """How far the file being imported is read (bytes): what is left, in rows."""
        if 0 < position <= size:
            self._to_read = self._counts["rows"] * (size - position) // position

    @property
    def sink(self) -> Gathered | None:
        """Where a file's consents or contracts go as they are read (import_files.chunks);
        None for other lists."""
        return self._packed if self.list in HASH_KINDS else None

    async def feed_chunk(self, chunk: Chunk) -> None:
        """Write one chunk of a file (see import_files.chunks)."""
        if chunk.needs:
            await self._ids({chunk.needs})
        if chunk.gathered:
            self._counts["rows"] += chunk.gathered
            await self._after_feed()
        if chunk.keys or chunk.listed:
            await self.feed_keys(chunk.keys, chunk.listed)
        if chunk.rows:
            await self.feed(chunk.rows)

    async def feed_keys(self, keys: Sequence[str], listed: Sequence[str] = ()) -> None:
        """Numbers and nothing else: do-not-call numbers without a reason (`keys`), or
        registry results (`keys` checked clear, `listed` listed)."""
        counts = self._counts
        counts["rows"] += len(keys) + len(listed)
        if self.kind == "bloctel":
            self._gathered[CLEAR].add(keys)
            self._gathered[LISTED].add(listed)
        elif self.kind == "dnc" and not listed:
            if self.mode == "remove":
                keys_of = self._lists.keys
                base = keys_of.base("dnc", self.target) if self.target else ""
                # Live entries taken since this import began are newer than its file.
                started_ms = int(self._now.timestamp() * 1000)
                either, in_list = await self._lists.remove(base, keys_of.dnc_live, keys, started_ms)
                counts["changed"] += either
                counts["removed"] += in_list
            else:
                self._gathered["dnc"].add(keys)
        else:
            raise ValueError(f"{self.kind} rows are not plain numbers")
        await self._after_feed()

    async def feed(self, rows: Sequence[Any]) -> None:
        """Write rows of this loader's kind."""
        if not rows:
            return
        lists = self._lists
        if self.kind == "bloctel":
            on_list = [row.key for row in rows if row.listed]
            await self.feed_keys([row.key for row in rows if not row.listed], on_list)
        elif self.kind == "dnc":
            if self.mode != "remove":
                reasons = {row.key: row.reason for row in rows if row.reason}
                await lists.set_reasons(lists.keys.base("dnc", self.target), reasons)
            await self.feed_keys([row.key for row in rows])
        elif self.kind == "consent":
            self._counts["rows"] += len(rows)
            # A file's chunks come as entries already; rows from a program may not.
            entries = rows if type(rows[0]) is tuple else [consent_entry(row) for row in rows]
            ids = await self._ids({entry[1] for entry in entries})
            self._packed.add_consents(entries, ids)
            await self._after_feed()
        else:
            self._counts["rows"] += len(rows)
            contracts = rows if type(rows[0]) is tuple else [contract_entry(r) for r in rows]
            ids = await self._ids({entry[1] for entry in contracts})
            self._packed.add_contracts(contracts, ids)
            await self._after_feed()

    async def known_principals(self) -> dict[str, int]:
        """Every principal's id given so far (another process reading part of the file
        names them before it starts)."""
        return await self._lists.principals()

    async def principal_id(self, principal: str) -> int:
        """A principal's id, given now if it has none (validated name)."""
        return (await self._lists.principal_ids([principal]))[0]

    async def renew(self) -> None:
        """Keep the import's lock while it waits."""
        await self._lists.renew(self.list, self._lock_version)

    async def _ids(self, principals: set[str]) -> dict[str, int]:
        """The ids of principals (store/packed.py), asked of Redis once per import."""
        known = self._packed.ids
        new = sorted(principals - known.keys())
        if new:
            for principal, principal_id in zip(
                new, await self._lists.principal_ids(new), strict=True
            ):
                self._packed.name(principal, principal_id)
        return known

    async def _after_feed(self) -> None:
        if sum(len(b) for b in self._gathered.values()) >= MAX_GATHERED:
            await self._write_gathered()
        # A contract file merged into the list in force is written whole at the end: its
        # first row of a pair replaces the pair's contracts, which only one write can tell.
        merging_contracts = self.kind == "contract" and not self.building
        gathered = len(self._packed)
        if self._to_read >= 0 and not self.building:
            due = gathered >= max(MIN_PACKED_WRITE, self._to_read)
        else:
            due = gathered >= MAX_PACKED or self._packed.buckets >= MAX_BUCKETS
        if due and not merging_contracts:
            await self._write_packed(background=True)
        await self._lists.renew(self.list, self._lock_version)

    async def _write_packed(self, background: bool = False) -> None:
        """Write what is gathered, after the part being written (in file order: which
        row of a pair comes later matters). `background`: go on reading meanwhile."""
        await self._written()
        if not len(self._packed):
            return
        base = self._lists.keys.packed(self.list, self.target)
        write = self._lists.write_packed(
            base,
            self._packed.take(),
            self._limits,
            replacing=not self.building,
            in_flight=WRITES_IN_FLIGHT if background else 2,
            merging=self._merged or not self.building,
        )
        self._merged = True
        if background:
            self._writing = asyncio.ensure_future(self._count_written(write))
        else:
            await self._count_written(write)

    async def _count_written(self, write: Awaitable[tuple[int, int]]) -> None:
        written, new = await write
        self._counts["new"] += new
        # Consents: a row older than the consent kept for its pair changes nothing.
        # Contracts: every row is written (the file holds each pair's whole set).
        self._counts["changed"] += written if self.kind == "consent" else 0

    async def _written(self) -> None:
        """The part being written, written (its error raised here)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def _write_gathered(self) -> None:
        await self._write_packed()
        lists = self._lists
        for part, buckets in self._gathered.items():
            if not buckets:
                continue
            if part == "dnc":
                base = lists.keys.base("dnc", self.target)
            else:
                base = lists.keys.base("optout", self.target, part)
            added = await lists.write(base, buckets, self._limit)
            self._counts["changed"] += added
            if part in (LISTED, CLEAR):
                self._counts["listed" if part == LISTED else "clear"] += added

    async def commit(
        self, before_swap: Callable[[Summary], Awaitable[None]] | None = None
    ) -> Summary:
        """Write what is gathered and put the import in force. `before_swap` is awaited
        with the summary (version, counts, size) right before the list goes in force: the
        audit record of an import is durable before any decision can read it."""
        lists = self._lists
        counts = self._counts
        await self._write_gathered()
        if self.kind == "contract":
            counts["changed"] = counts["rows"]
        summary = Summary(self.kind, self.mode, rows=counts["rows"], changed=counts["changed"])
        announced = False

        async def announce() -> None:
            nonlocal announced
            summary.version = self.target
            if before_swap is not None and not announced:
                announced = True
                await before_swap(summary)

        loaded_at = self._now.astimezone(UTC).isoformat(timespec="seconds")
        try:
            if self.list == "optout":
                entry: dict[str, Any] = {
                    "version": self.target,
                    "checked_on": self._checked_on.isoformat() if self._checked_on else None,
                    "ref": self._ref,
                    "source": self._source,
                    "loaded_at": loaded_at,
                    "listed": counts["listed"],
                    "clear": counts["clear"],
                    "size": counts["listed"] + counts["clear"],
                }
                kept = list(self._meta) if self.mode == "add" else []
                sets = sorted(
                    [*kept, entry],
                    key=lambda s: (s["checked_on"], int(s["version"])),
                    reverse=True,
                )
                summary.size = int(entry["size"])
                summary.result_sets = len(sets)
                await announce()
                await lists.swap(
                    "optout",
                    [s["version"] for s in sets],
                    sets,
                    self._lock_version,
                    "",
                    self._dropping(),
                )
                self._swapped = True
            elif self.target:
                meta = dict(self._meta) if not self.building else {}
                size = await self._size(meta)
                meta.update(
                    version=self.target,
                    size=size,
                    updated_at=loaded_at,
                    **({"loaded_at": loaded_at, "source": self._source} if self.building else {}),
                )
                if not self.building:
                    meta.setdefault("changes", [])
                    meta["changes"] = [
                        *meta["changes"][-9:],
                        {"mode": self.mode, "source": self._source, "at": loaded_at},
                    ]
                summary.size = size
                await announce()
                await lists.swap(
                    self.list,
                    [self.target],
                    meta,
                    self._lock_version,
                    self.target,
                    self._dropping(),
                )
                self._swapped = True
            await announce()  # a removal with no imported list to remove from
            for version in self._dropping():  # no longer read by anyone: free them
                await lists.free(self.list, version)
                await lists.forget(self.list, version)
            summary.stale_versions = list(self._dropping())
        finally:
            await lists.release(self.list, self._lock_version)
        return summary

    def _dropping(self) -> tuple[str, ...]:
        """The versions this import takes out of force."""
        if self.building and (self.list != "optout" or self.mode == "replace"):
            return self._previous
        return ()

    async def abort(self) -> None:
        """Undo a build (an in-place `add` or `remove` cannot be undone: its changes are
        each whole and repeating the file is harmless)."""
        try:
            # A part still being written finishes first: its keys must not come after
            # the freeing.
            with contextlib.suppress(Exception):
                await self._written()
            if self.building and not self._swapped:
                await self._lists.free(self.list, self.target)
        finally:
            await self._lists.release(self.list, self._lock_version)

    async def _size(self, meta: dict[str, Any]) -> int:
        before = 0 if self.building else int(meta.get("size", 0))
        if self.list in HASH_KINDS:
            return before + self._counts["new"]
        if self.mode == "remove":
            return max(before - self._counts["removed"], 0)
        return before + self._counts["changed"]


async def load(
    lists: Lists,
    kind: str,
    rows: Sequence[Any],
    mode: str = "add",
    *,
    checked_on: date | None = None,
    ref: str = "",
    source: str = "",
    now: datetime | None = None,
    chunk: int = 5000,
) -> Summary:
    """Load rows already in memory (tests, benchmarks, small programs) as one import."""
    loader = Loader(
        lists,
        kind,
        mode,
        source=source,
        now=now or datetime.now(UTC),
        checked_on=checked_on,
        ref=ref,
    )
    await loader.open()
    try:
        for start in range(0, len(rows), chunk):
            await loader.feed(rows[start : start + chunk])
        return await loader.commit()
    except BaseException:
        await loader.abort()
        raise
