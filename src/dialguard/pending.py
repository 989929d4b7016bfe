"""Changes the journal holds and Redis has not taken: applied in journal order once Redis
answers, and counted in decisions meanwhile.

A change is written to the journal before Redis is told (dialguard.changes). When Redis
does not take it (down, frozen, failing over), it waits here, and a background task
retries until Redis answers. Changes written by another process on this node (the CLI, a
worker) are found by following the journal; at start-up, the journal files of the last
PENDING_DAYS days are read and every change Redis has no applied mark for is queued.

While a change waits, a decision about its number treats it as done when it denies: a
pending do-not-call is a do-not-call hit, a pending refusal or withdrawal counts from its
instant, a pending contract end ends the contract. So no call goes out in the gap. What
would let a call through (a removal, a consent or a contract added) waits for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import structlog

from dialguard.audit.files import AuditUnavailable
from dialguard.audit.reader import lines, snapshot
from dialguard.changes import Change, ChangeKind, change_in
from dialguard.model import Contract, DncEntry, Facts
from dialguard.store import Store, StoreUnavailable

__all__ = ["PENDING_DAYS", "Pending", "journal_changes"]

log = structlog.get_logger("dialguard.pending")

# How far back the start-up scan looks for changes Redis never took (a Redis down longer
# than this is a rebuild, not a retry). Each day file is read whole, off the event loop.
PENDING_DAYS = 3
# Retries back off to this: a Redis back up is used within this many seconds.
RETRY_MAX_S = 1.0
# How often the journal is followed for changes other processes wrote.
FOLLOW_S = 0.5


def journal_changes(
    directory: Path,
    days: int,
    now: datetime,
    positions: dict[Path, int] | None = None,
    newer_than: str | None = None,
) -> list[Change]:
    """The change records of the journal files of the last `days` UTC days, in journal
    order (every day with `days=0`). `positions`: where each file was read up to (updated),
    to read on from there; a file skipped for its age is positioned at its end.
    `newer_than`: a file named after it is read whatever its day (a journal's first file,
    written after the start with a record dated in the past)."""
    oldest = (now.astimezone(UTC).date().toordinal() - days + 1) if days else 0
    found: list[Change] = []
    for path, size in snapshot(directory).files:
        start = positions.get(path, 0) if positions is not None else 0
        if size <= start:
            continue
        new_file = newer_than is not None and path.name > newer_than
        if (positions is None or path not in positions) and not new_file:
            with contextlib.suppress(ValueError):
                day = datetime.strptime(path.name[6:16], "%Y-%m-%d").date().toordinal()
                if day < oldest:
                    if positions is not None:
                        positions[path] = size  # followed from here on, never read back
                    continue
        end = start
        for offset, line in lines(path, size, [], start):
            end = offset + len(line) + 1
            change = change_in(line)
            if change is not None:
                found.append(change)
        if positions is not None:
            positions[path] = end
    return found


# Changes that would let a call through: while they wait, Redis's view stands.
_NOT_COUNTED = frozenset({ChangeKind.DNC_REMOVE, ChangeKind.CONSENT_ADD, ChangeKind.CONTRACT_ADD})


def _ended(contracts: tuple[Contract, ...], change: Change) -> tuple[Contract, ...]:
    last_day = date.fromisoformat(change.end)
    ended = change.contract_id
    return tuple(
        replace(c, end=min(c.end or last_day, last_day)) if c.contract_id == ended else c
        for c in contracts
    )


class Pending:
    def __init__(self, store: Store, directory: Path | None) -> None:
        self._store = store
        self._directory = directory
        self._queue: dict[str, Change] = {}  # id -> change, in journal order
        self._known: set[str] = set()  # ids met (applied or queued), not to queue twice
        self._positions: dict[Path, int] = {}
        # The newest journal file at start: a file named after it appeared since, and is
        # read whole. An older one appearing later (a backup restored) is new to us but
        # not new: only its last PENDING_DAYS days are read, as at start, or its old
        # removals would be applied again once their applied marks have aged out.
        self._newest_at_start: str | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Change]:
        return iter(list(self._queue.values()))

    def oldest_age_s(self, now: datetime) -> float:
        """Seconds since the oldest change still waiting was journalled (0: none waits).
        The queue is in journal order, but several processes write one journal: the
        oldest instant is looked for, not taken from the first."""
        if not self._queue:
            return 0.0
        oldest_ms = min(change.ts_ms for change in self._queue.values())
        return max(now.timestamp() - oldest_ms / 1000, 0.0)

    # --- taking changes ---------------------------------------------------------------

    def expect(self, change_id: str) -> None:
        """A change about to be written by this process: following the journal must not
        take it for another's."""
        self._known.add(change_id)

    def unexpect(self, change_id: str) -> None:
        """Its journal write failed: should its line have landed all the same, following
        the journal applies it like another's."""
        self._known.discard(change_id)

    async def submit(self, change: Change) -> bool | None:
        """Apply a change just written to the journal, after any that wait before it:
        whether it changed anything in Redis, or None when Redis did not take it (it then
        waits here, retried in the background)."""
        self._known.add(change.id)
        if not self._queue:
            try:
                return await self._store.apply(change)
            except StoreUnavailable as exc:
                log.error("change_pending", change=change.id, kind=change.kind, error=str(exc))
        self._queue[change.id] = change
        self._wake.set()
        return None

    def forget(self) -> None:
        """Forget the ids of the changes met but those still waiting. They are kept to tell
        this process's journal lines from others' when following the journal; a process
        that never follows it (the VICIdial sync, thousands of changes a pass) would only
        pile them up."""
        self._known = set(self._queue)

    def queue(self, changes: Iterable[Change]) -> None:
        for change in changes:
            if change.id not in self._known:
                self._known.add(change.id)
                self._queue[change.id] = change
        if self._queue:
            self._wake.set()

    async def apply_all(self) -> int:
        """Apply what waits, in journal order, until Redis refuses (StoreUnavailable)."""
        done = 0
        for change in list(self._queue.values()):
            try:
                await self._store.apply(change)
            except ValueError as exc:  # a record no version of ours could apply
                log.error("change_unappliable", change=change.id, error=str(exc))
            else:
                done += 1
                log.info("change_applied", change=change.id, kind=change.kind, late=True)
            del self._queue[change.id]
        return done

    # --- what waits, for decisions ----------------------------------------------------

    def overlay(self, number_key: str, principal: str, facts: Facts) -> Facts:
        """`facts` as they will be once what waits for this number is applied."""
        if not self._queue:
            return facts
        for change in self._queue.values():
            if change.number_key != number_key:
                continue
            if change.adds_dnc and facts.dnc is None and change.dnc_scope in ("", principal):
                why = f"{change.why} (pending {change.id})"
                entry = DncEntry(why, change.at, principal_only=bool(change.dnc_scope))
                facts = replace(facts, dnc=entry)
            elif change.kind in _NOT_COUNTED:
                continue  # Redis's view stands until it is applied: the safer answer
            elif change.kind is ChangeKind.CONTRACT_END and change.principal == principal:
                facts = replace(facts, contracts=_ended(facts.contracts, change))
            elif change.principal == principal:
                if change.refuses and (facts.refused_at is None or facts.refused_at < change.at):
                    facts = replace(facts, refused_at=change.at)
                if change.withdraws and (
                    facts.withdrawn_at is None or facts.withdrawn_at < change.at
                ):
                    facts = replace(facts, withdrawn_at=change.at)
        return facts

    # --- the background ---------------------------------------------------------------

    async def start(self, now: datetime) -> None:
        """Queue what the journal holds and Redis never took; then retry and follow."""
        if self._directory is not None:
            await self._read_journal(now, PENDING_DAYS)
            try:
                files = (await asyncio.to_thread(snapshot, self._directory)).files
            except (AuditUnavailable, OSError):
                # Unreadable: files of today on (UTC) count as new, nothing older.
                self._newest_at_start = f"audit-{now.astimezone(UTC):%Y-%m-%d}"
            else:
                self._newest_at_start = max((path.name for path, _ in files), default="")
        self._tasks = [asyncio.get_running_loop().create_task(self._retry())]
        if self._directory is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._follow()))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _read_journal(self, now: datetime, days: int) -> None:
        assert self._directory is not None
        try:
            changes = await asyncio.to_thread(
                journal_changes,
                self._directory,
                days,
                now,
                self._positions,
                self._newest_at_start,
            )
        except AuditUnavailable as exc:
            log.error("journal_unreadable", error=str(exc))
            return
        fresh = [change for change in changes if change.id not in self._known]
        if not fresh:
            return
        try:
            applied = await self._store.applied([change.id for change in fresh])
        except StoreUnavailable:
            applied = set()  # applying again changes nothing: queue them all
        self._known.update(applied)
        self.queue(change for change in fresh if change.id not in applied)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await self._read_journal(datetime.now(UTC), PENDING_DAYS)
            except Exception:  # never stop following: the next turn may read again
                log.exception("journal_follow_failed")

    async def _retry(self) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                try:
                    await self.apply_all()
                except StoreUnavailable as exc:
                    log.warning("changes_waiting", pending=len(self._queue), error=str(exc))
                except Exception:  # never stop retrying: what waits is an opt-out
                    log.exception("changes_retry_failed", pending=len(self._queue))
                else:
                    delay = 0.05
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
