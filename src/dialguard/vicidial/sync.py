"""One pass of the VICIdial sync, and the loop that runs a pass every `interval_s`.

A pass **pushes** first, then **pulls**:

- push: the live do-not-call additions journalled since the cursor (`dnc add`, a
  do-not-call outcome), read from the journal (the write-ahead log: an addition made while
  VICIdial's database was down is there, and goes out once it is back), are put on
  `vicidial_dnc` in the configured form, logged in `vicidial_dnc_log` as user `dialguard`
  when the schema has it, and the cursor moves past them in the same step as the sync
  notes them as VICIdial's. Additions that came from VICIdial (the record's adapter is
  `vicidial`) are not written back: they are there already, and writing one back after
  VICIdial deleted it would undo the deletion.
- pull: each VICIdial list whose fingerprint changed is read whole and compared with what
  it held at the last pass: a number new there is added to dialguard's do-not-call list
  (`vicidial_dnc`: the company's list; a mapped campaign's list: its principal's own), a
  number gone from there is removed, each through the service as a live change (journal
  first, then Redis), with the VICIdial user and time `vicidial_dnc_log` gives.

Both are idempotent: a pass run again (or after a crash half-way) changes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from dialguard.audit.files import AuditUnavailable
from dialguard.audit.reader import Torn, lines
from dialguard.central.ship import journal_view
from dialguard.changes import change_in
from dialguard.config import Config, VicidialSettings
from dialguard.service import Service
from dialguard.store import StoreUnavailable
from dialguard.vicidial.forms import to_vicidial, vicidial_forms, vicidial_key
from dialguard.vicidial.state import Cursor, State
from dialguard.vicidial.tables import (
    SYSTEM_LIST,
    LogRow,
    Tables,
    VicidialUnavailable,
    fingerprint_with,
)

__all__ = [
    "ADAPTER",
    "PullReport",
    "PushReport",
    "Sync",
    "SyncProblem",
    "keep_syncing",
]

log = structlog.get_logger("dialguard.vicidial")

# The adapter of the changes the sync makes: how a later pass knows they came from VICIdial.
ADAPTER = "vicidial"
# Additions written to VICIdial between two moves of the cursor.
PUSH_BATCH = 500
# Changes applied through the service at once (each a journal record and a Redis call;
# together they share the journal's group commit).
APPLY_BATCH = 256
# Every list is read whole this often even if its fingerprint did not change.
FULL_READ_S = 3600
# Retries after a failed pass back off to this.
RETRY_MAX_S = 60.0
# How often a sync started by `serve` looks whether its parent is still there.
PARENT_CHECK_S = 1.0


class SyncProblem(Exception):
    """The sync cannot go on until someone looks (a journal shorter than the cursor)."""


@dataclass
class PushReport:
    additions: int = 0  # live do-not-call additions met in the journal
    written: int = 0  # put on vicidial_dnc
    present: int = 0  # already there (in either form)
    echoes: int = 0  # came from VICIdial: not written back
    unwritable: int = 0  # outside the French plan: VICIdial's tables have no country code
    cursor: Cursor | None = None
    torn: list[Torn] = field(default_factory=list)


@dataclass
class PullReport:
    lists_read: list[str] = field(default_factory=list)
    added: dict[str, int] = field(default_factory=dict)  # per list
    removed: dict[str, int] = field(default_factory=dict)
    held: int = 0  # removals not applied: more than max_removals
    unreadable: int = 0  # entries that are no French number (AREACODE, garbage)
    pending: int = 0  # changes journalled that Redis did not take yet

    @property
    def changes(self) -> int:
        return sum(self.added.values()) + sum(self.removed.values())


class Sync:
    def __init__(self, config: Config, service: Service, tables: Tables, state: State) -> None:
        assert config.vicidial is not None
        self.config = config
        self.settings: VicidialSettings = config.vicidial
        self.service = service
        self.tables = tables
        self.state = state
        self._read_now: set[str] = set()  # the lists this pass read

    async def run_pass(self, accept_removals: bool = False) -> tuple[PushReport, PullReport]:
        """Push, then pull (unless `pull = false`), under the state's lock: a second sync
        process waits for this pass to end."""
        if not self.state.try_lock():
            log.info("vicidial_sync_waiting", reason="another process's pass is under way")
            await asyncio.to_thread(self.state.lock)
        try:
            await self._retry_pending()
            pushed = await self.push()
            pulled = await self.pull(accept_removals) if self.settings.pull else PullReport()
            pulled.pending = len(self.service.pending)
            self.service.pending.forget()
            with self.state.transaction():
                self.state.note("last_pass", self.service.clock().isoformat(timespec="seconds"))
                self.state.note("held_removals", str(pulled.held))
            return pushed, pulled
        finally:
            self.state.unlock()

    async def _retry_pending(self) -> None:
        """Changes an earlier pass journalled and Redis did not take: `serve` applies them
        too (it follows the journal); a sync running alone must not leave them waiting."""
        if len(self.service.pending):
            with contextlib.suppress(StoreUnavailable):
                await self.service.pending.apply_all()

    # --- dialguard -> VICIdial ----------------------------------------------------------

    async def push(self) -> PushReport:
        report = PushReport(cursor=self.state.cursor())
        logged: bool | None = None
        while True:
            cursor = self.state.cursor()
            keys, position, reached_end = await asyncio.to_thread(self._additions, cursor, report)
            if position is None:
                break
            written: list[str] = []  # as written (for the fingerprint)
            known: list[str] = []  # keys VICIdial now holds
            if keys:
                if logged is None:
                    logged = await asyncio.to_thread(self.tables.has_log)
                written, known = await asyncio.to_thread(self._write, keys, logged, report)
            with self.state.transaction():
                self.state.mark_seen(SYSTEM_LIST, known)
                fingerprint = self.state.fingerprint(SYSTEM_LIST)
                if fingerprint is not None and written:
                    for raw in written:
                        fingerprint = fingerprint_with(fingerprint, raw)
                    self.state.set_fingerprint(SYSTEM_LIST, fingerprint)
                self.state.set_cursor(position)
            report.cursor = position
            if written:
                log.info(
                    "vicidial_pushed", written=len(written), cursor=f"{position[0]}:{position[1]}"
                )
            if reached_end:
                break
        return report

    def _additions(
        self, cursor: Cursor | None, report: PushReport
    ) -> tuple[list[str], Cursor | None, bool]:
        """The next additions to write (store keys) from `cursor` on, the cursor after
        them (None: nothing new) and whether the journal's end was reached."""
        directory = self.config.audit_dir
        if not directory.is_dir():
            return [], None, True  # no journal yet: nothing was ever added
        files, _ = journal_view(directory, cursor[0] if cursor else "")
        keys: list[str] = []
        position = cursor
        for path, size in files:
            begin = cursor[1] if cursor is not None and path.name == cursor[0] else 0
            if begin > size:
                raise SyncProblem(
                    f"{path}: {size} bytes, but the VICIdial sync's cursor is at byte {begin}:"
                    " the journal was truncated or replaced (run `dialguard audit verify`)"
                )
            for offset, line in lines(path, size, report.torn, begin):
                position = (path.name, offset + len(line) + 1)
                change = change_in(line)
                if change is None or not change.adds_dnc or change.dnc_scope:
                    continue
                report.additions += 1
                if _adapter(line) == ADAPTER:
                    report.echoes += 1
                    continue
                keys.append(change.number_key)
                if len(keys) >= PUSH_BATCH:
                    return keys, position, False
        if position == cursor:
            return [], None, True
        return keys, position, True

    def _write(
        self, keys: list[str], logged: bool, report: PushReport
    ) -> tuple[list[str], list[str]]:
        """Put each number on vicidial_dnc unless it is there in either form: (the
        spellings inserted, the keys VICIdial holds now)."""
        forms = {key: vicidial_forms(key) for key in dict.fromkeys(keys)}
        present = self.tables.present([form for both in forms.values() for form in both])
        written: list[str] = []
        known: list[str] = []
        for key, both in forms.items():
            raw = to_vicidial(key, self.settings.number_form)
            if raw is None:
                report.unwritable += 1
                log.warning("vicidial_not_writable", number="+" + key, why="not a French number")
                continue
            if any(form in present for form in both) or not self.tables.add(raw, logged):
                report.present += 1
            else:
                written.append(raw)
                report.written += 1
            present.add(raw)
            known.append(key)
        return written, known

    # --- VICIdial -> dialguard ----------------------------------------------------------

    async def pull(self, accept_removals: bool = False) -> PullReport:
        report = PullReport()
        mapped = dict(self.settings.campaigns)
        names = [SYSTEM_LIST, *mapped]
        with self.state.transaction():
            for old in self.state.lists() - set(names):
                self.state.forget_list(old)
                log.info("vicidial_list_forgotten", list=old, why="no longer mapped")
        fingerprints = await asyncio.to_thread(self.tables.fingerprints, mapped)
        now_ms = int(self.service.clock().timestamp() * 1000)
        full = now_ms - int(self.state.noted("full_read_ms") or 0) >= FULL_READ_S * 1000
        changed = [
            name for name in names if full or self.state.fingerprint(name) != fingerprints[name]
        ]
        if not changed:
            return report
        logged = await asyncio.to_thread(self.tables.has_log)
        self.state.start_reading()
        for name in changed:
            await self._read(name, report)
        report.lists_read = changed
        self._read_now = set(changed)
        gone = {name: self.state.gone_count(name) for name in changed}
        limit = self.settings.max_removals
        hold = bool(limit) and sum(gone.values()) > limit and not accept_removals
        for name in changed:
            await self._apply(name, "add", logged, report)
        if hold:
            report.held = sum(gone.values())
            log.error(
                "vicidial_removals_held",
                removals=report.held,
                max_removals=limit,
                lists={name: count for name, count in gone.items() if count},
                fix="check VICIdial's lists; then `dialguard vicidial sync --once"
                " --accept-removals` applies them",
            )
        else:
            for name in changed:
                await self._apply(name, "delete", logged, report)
        with self.state.transaction():
            for name in changed:
                # A list with removals held is read again next pass, until they are applied.
                kept = None if hold and gone[name] else fingerprints[name]
                self.state.set_fingerprint(name, kept)
            if full:
                self.state.note("full_read_ms", str(now_ms))
        return report

    async def _read(self, name: str, report: PullReport) -> None:
        pages = self.tables.entries(name)
        while True:
            page = await asyncio.to_thread(next, pages, None)
            if page is None:
                return
            keys = [key for key in map(vicidial_key, page) if key is not None]
            report.unreadable += len(page) - len(keys)
            self.state.read(name, keys)

    async def _apply(self, name: str, action: str, logged: bool, report: PullReport) -> None:
        """Every addition (`add`) or removal (`delete`) of one list, a page at a time, each
        page noted in the state once the service journalled it."""
        principal = self._principal(name)
        counts = report.added if action == "add" else report.removed
        after = ""
        while True:
            if action == "add":
                page = self.state.added(name, after, APPLY_BATCH)
            else:
                page = self.state.gone(name, after, APPLY_BATCH)
            if not page:
                return
            after = page[-1]
            who = await asyncio.to_thread(self._who, page, name, action) if logged else {}
            todo = [key for key in page if not self._elsewhere(key, name, principal, action)]
            results = await asyncio.gather(
                *(self._change(key, name, action, principal, who.get(key)) for key in todo),
                return_exceptions=True,
            )
            failed = {key for key, result in zip(todo, results, strict=True) if result is not None}
            done = [key for key in page if key not in failed]
            with self.state.transaction():
                if action == "add":
                    self.state.mark_seen(name, done)
                else:
                    self.state.unmark_seen(name, done)
            if len(todo) > len(failed):
                counts[name] = counts.get(name, 0) + len(todo) - len(failed)
            self.service.pending.forget()  # a first pass makes a million changes, say
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def _principal(self, name: str) -> str:
        """ "" for the system list (the company's list), else the mapped campaign's
        principal."""
        if name == SYSTEM_LIST:
            return ""
        return self.config.campaigns[self.settings.campaigns[name]].principal

    def _elsewhere(self, key: str, name: str, principal: str, action: str) -> bool:
        """Another mapped campaign list of the same principal holds the number: its
        principal's entry is there already (add) or must stay (delete)."""
        if not principal:
            return False
        for other, campaign in self.settings.campaigns.items():
            if other == name or self.config.campaigns[campaign].principal != principal:
                continue
            if self.state.seen_in(other, key) if action == "add" else self._holds(other, key):
                return True
        return False

    def _holds(self, name: str, key: str) -> bool:
        """Whether list `name` holds `key` after this pass: what was read of it now, or
        what it held before when it was not read (unchanged)."""
        if name in self._read_now:
            return self.state.now_in(name, key)
        return self.state.seen_in(name, key)

    def _who(self, keys: list[str], name: str, action: str) -> dict[str, LogRow]:
        """The latest log row of this action on this list for each number, if any."""
        form_key = {form: key for key in keys for form in vicidial_forms(key)}
        wanted = name.casefold()
        latest: dict[str, LogRow] = {}
        for row in self.tables.log(list(form_key)):
            key = form_key.get(row.phone_number)
            if key is not None and row.list.casefold() == wanted and row.action == action:
                latest[key] = row  # oldest first: the last one wins
        return latest

    async def _change(
        self, key: str, name: str, action: str, principal: str, row: LogRow | None
    ) -> None:
        desc = "internal DNC list" if name == SYSTEM_LIST else f"campaign {name} DNC list"
        user = _plain(row.user) if row is not None and row.user else ""
        fields = {"vicidial_list": name}
        by = ""
        if user:
            fields["vicidial_user"] = user
            by += f" by {user}"
        if row is not None and row.at is not None:
            at = row.at.isoformat(sep=" ", timespec="seconds")
            fields["vicidial_at"] = at
            by += f" on {at} (VICIdial's clock)"
        operator = user or ADAPTER
        raw = "+" + key
        if action == "add":
            why = f"VICIdial {desc}" + (f", added{by}" if by else "")
            _, _, applied = await self.service.dnc_add(
                raw, why, operator=operator, principal=principal, adapter=ADAPTER, fields=fields
            )
            if not applied:
                log.warning("vicidial_change_pending", number=raw, list=name, action=action)
        else:
            why = f"deleted from VICIdial {desc}{by}"
            await self.service.dnc_remove(
                raw, why, operator=operator, principal=principal, adapter=ADAPTER, fields=fields
            )


def _adapter(line: bytes) -> Any:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record.get("adapter") if isinstance(record, dict) else None


def _plain(text: str) -> str:
    """A VICIdial user name as it may go in a record and a reason (no '|', no control
    characters; VARCHAR(20) in VICIdial)."""
    return "".join(c for c in text if c.isprintable() and c != "|")[:20]


def report_line(pushed: PushReport, pulled: PullReport) -> dict[str, Any]:
    """The counters of one pass, for a log line or `--json`."""
    return {
        "pushed": pushed.written,
        "already_in_vicidial": pushed.present,
        "not_written_back": pushed.echoes,
        "not_writable": pushed.unwritable,
        "cursor": f"{pushed.cursor[0]}:{pushed.cursor[1]}" if pushed.cursor else None,
        "lists_read": pulled.lists_read,
        "added": pulled.added,
        "removed": pulled.removed,
        "removals_held": pulled.held,
        "unreadable_entries": pulled.unreadable,
        "pending_for_redis": pulled.pending,
    }


async def keep_syncing(sync: Sync, stop: asyncio.Event, parent: int = 0) -> None:
    """A pass every `interval_s` until `stop` is set (or the `parent` process is gone). A
    pass that fails (VICIdial's database, the journal, the state) is logged and tried
    again: 1 s, doubling up to a minute. Nothing is lost meanwhile: additions wait in the
    journal past the cursor, VICIdial's changes in its tables."""
    interval = float(sync.settings.interval_s)
    delay = 1.0
    while not stop.is_set():
        if parent and os.getppid() != parent:
            log.error("vicidial_sync_parent_gone", parent=parent)
            return
        try:
            pushed, pulled = await sync.run_pass()
        except (VicidialUnavailable, AuditUnavailable, SyncProblem) as exc:
            log.warning("vicidial_sync_failed", error=str(exc), retry_s=delay)
            wait, delay = delay, min(delay * 2, RETRY_MAX_S)
        except Exception:  # never stop syncing: the next pass may succeed
            log.exception("vicidial_sync_error", retry_s=delay)
            wait, delay = delay, min(delay * 2, RETRY_MAX_S)
        else:
            delay = 1.0
            wait = interval
            if pushed.written or pulled.changes or pulled.held or pulled.pending:
                log.info("vicidial_synced", **report_line(pushed, pulled))
        await _sleep(stop, wait, parent)


async def _sleep(stop: asyncio.Event, seconds: float, parent: int) -> None:
    """Wait `seconds` or until `stop`; a started-by-serve sync looks at its parent meanwhile."""
    step = min(seconds, PARENT_CHECK_S) if parent else seconds
    waited = 0.0
    while waited < seconds and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), step)
        waited += step
        if parent and os.getppid() != parent:
            return
