"""The shipper: a node's journal into the central store, from its cursor, in chain order.

Each batch is read from the node's cursor (file, byte offset, last hash), checked link by
link as `audit verify` checks it, and written in one transaction with the new cursor
(store.py). So:

- **resumable**: after any outage (the store, the network, the shipper killed) the next
  batch starts at the cursor, which moved only with the records it covers;
- **at least once, stored once**: a batch that did not commit is read and sent again;
  ids already stored are skipped and not counted again;
- **in journal order**, and only what the journal made durable: the newest file is read
  up to the size `audit.head` gives (written after the batch's fdatasync, read under the
  journal's shared lock, or checked against the line it points to), never a record still
  being written;
- **checked**: each line's hash must match its bytes, and its `prev` the hash before it
  (the node's last shipped hash; for its first record, zeros or `audit.start`). A line
  that fails is still stored (when it is a record with an id) and flagged in
  `chain_breaks`; shipping goes on. A journal file shorter than what was shipped from it
  stops this node's shipping with one line (JournalProblem): the journal was truncated.

The journal is never changed, and locked only when its head cannot be read without (see
`read_head`): a shipper can never slow or stop the node's decisions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from dialguard.audit.files import (
    GENESIS,
    HEAD_NAME,
    LOCK_NAME,
    START_NAME,
    AuditUnavailable,
    Head,
    day_of,
    journal_files,
    parse_head,
    unseal,
)
from dialguard.audit.reader import Torn, lines
from dialguard.central.connect import open_store
from dialguard.central.errors import CentralUnavailable, CursorMoved, JournalProblem
from dialguard.central.store import Break, CentralStore, Position, Row
from dialguard.config import CentralSettings

__all__ = ["ShipReport", "Shipper", "follow", "journal_view", "read_head"]

log = structlog.get_logger("dialguard.central")

NOT_SEALED = "not a hash-chained record (inserted?)"
EDITED = "its content does not match its hash: edited"
UNLINKED = "does not follow the record before it: a record was removed, inserted or reordered here"
NOT_A_RECORD = "not a JSON record with an id and a ts: not stored"


@dataclass(slots=True)
class ShipReport:
    node: str
    read: int = 0  # journal lines read
    stored: int = 0
    duplicates: int = 0
    batches: int = 0
    breaks: list[Break] = field(default_factory=list)
    torn: list[Torn] = field(default_factory=list)
    position: Position | None = None


def journal_view(directory: Path, after: str = "") -> tuple[list[tuple[Path, int]], bytes]:
    """The journal files from `after` on, each with the size that may be read, and the
    hash the chain starts from. Files before the head's are closed (a record never goes
    back to an earlier day), so they are read whole; the head's file up to the head's
    size; later ones not yet (the head is written after the batch's fdatasync)."""
    files = [path for path in journal_files(directory) if path.name >= after]
    head = read_head(directory)
    try:
        raw = (directory / START_NAME).read_bytes().split()
        start = raw[-1] if raw else GENESIS
    except FileNotFoundError:
        start = GENESIS
    view: list[tuple[Path, int]] = []
    for path in files:
        if head is not None and path.name > head.name:
            break
        if head is not None and path.name == head.name:
            view.append((path, _line_end(path, head.size)))
            break
        # A copy without a head (an inspector's, a back-fill): every complete line.
        try:
            view.append((path, path.stat().st_size))
        except FileNotFoundError:  # pruned meanwhile
            continue
    return view, start


# Lock-free reads of the head tried before taking the journal's lock (a torn read is
# retried at once: the writer's pwrite of ~100 bytes takes a microsecond).
HEAD_TRIES = 3


def read_head(directory: Path) -> Head | None:
    """The journal's head, read without the journal's lock when it proves itself: the
    line that ends at its size in its file must end with its hash. A read torn by the
    writer's pwrite (some bytes old, some new) pairs a size with a hash it does not end
    with, so it is read again; only a head the writer wrote can pass, and the writer
    writes it after the bytes it covers are durable.

    Why not simply the shared lock, as other readers do: the shipper runs with the lowest
    CPU priority (SCHED_IDLE, so that it never delays a decision), and a process of that
    priority holding the lock can be kept off the CPU as long as others are busy, while
    the writer of every decision waits for the lock. The lock is taken only when a
    lock-free read does not prove itself (no head yet, a head at a file's start, a
    journal written before the chain, or three torn reads in a row)."""
    for _ in range(HEAD_TRIES):
        try:
            head = parse_head((directory / HEAD_NAME).read_bytes()[:128])
        except FileNotFoundError:
            break
        if head is not None and _ends_with(directory / head.name, head.size, head.hash):
            return head
    return _read_head_locked(directory)


def _ends_with(path: Path, size: int, digest: bytes) -> bool:
    tail = b'"' + digest + b'"}\n'
    if size < len(tail):
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(size - len(tail))
            return handle.read(len(tail)) == tail
    except OSError:
        return False


def _read_head_locked(directory: Path) -> Head | None:
    head_raw = b""
    lock_fd = -1
    with contextlib.suppress(OSError):
        lock_fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if lock_fd >= 0:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)  # between two batches
        with contextlib.suppress(FileNotFoundError):
            head_raw = (directory / HEAD_NAME).read_bytes()[:128]
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    return parse_head(head_raw)


def _line_end(path: Path, size: int) -> int:
    """`size`, or the end of the line that holds byte size - 1 when it is not a newline.
    A live journal's head always falls on a line's end; one that does not means the file
    was edited before it (a field made longer, say): its last record is read whole, to be
    checked and flagged, rather than reported as torn."""
    if size == 0:
        return 0
    try:
        with path.open("rb") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return size
            rest = handle.read(1 << 20)
    except OSError:
        return size
    end = rest.find(b"\n")
    return size if end < 0 else size + end + 1


class Shipper:
    """Ships one journal directory as one node. Not thread-safe; one per process and node
    (two at once for one node are safe too: they take turns through the cursor)."""

    def __init__(self, store: CentralStore, directory: Path, node: str, batch: int = 5000) -> None:
        self.store = store
        self.directory = directory
        self.node = node
        self.batch = batch

    def ship(self, stop: Callable[[], bool] = lambda: False) -> ShipReport:
        """Ship every batch there is now; return when caught up (a batch that was not
        full), or `stop()` is true. Records written meanwhile wait for the next call: a
        journal written to every millisecond would otherwise keep a follower committing
        one record at a time."""
        report = ShipReport(self.node)
        while not stop():
            cursor = self.store.cursor(self.node)
            since = cursor.position if cursor is not None else None
            batch = self._read(since, report)
            if batch is None:
                break
            try:
                ingested = self.store.ingest(
                    self.node,
                    since,
                    cursor.start_hash if cursor is not None else batch.start_hash,
                    batch.rows,
                    batch.breaks,
                    batch.position,
                    int(time.time() * 1000),
                )
            except CursorMoved:
                continue  # another shipper of this node stored it: read on from its cursor
            report.batches += 1
            report.read += batch.lines
            report.stored += ingested.stored
            report.duplicates += ingested.duplicates
            report.breaks += ingested.breaks
            report.position = batch.position
            if batch.lines < self.batch:
                break  # all there was: a follower waits for its next poll, not a record
        return report

    def _read(self, since: Position | None, report: ShipReport) -> _Batch | None:
        """The next batch after `since`; None when there is nothing new."""
        files, start = journal_view(self.directory, since.file if since else "")
        expected: bytes | None = since.last_hash.encode() if since else start
        if since is not None and not since.last_hash:
            expected = None  # the last line shipped was not chained: nothing to link to
        rows: list[Row] = []
        breaks: list[Break] = []
        position = since
        count = 0
        for path, size in files:
            begin = since.offset if since is not None and path.name == since.file else 0
            if begin > size:
                raise JournalProblem(
                    f"{path}: {size} bytes to read, but {begin} were shipped from it already:"
                    " the journal was truncated after shipping (run `dialguard audit verify`)"
                )
            if begin == size:
                continue
            file_day = day_of(path.name).toordinal() - _EPOCH_ORDINAL
            for offset, line in lines(path, size, report.torn, begin):
                count += 1
                row, problem, digest = _check(line, expected)
                if row is None:
                    problem = f"{problem}; {NOT_A_RECORD}" if problem else NOT_A_RECORD
                    breaks.append(Break(_id_of(line), path.name, offset, problem))
                else:
                    rows.append(row._replace(file_day=file_day, file_offset=offset))
                    if problem:
                        breaks.append(Break(row.id, path.name, offset, problem))
                expected = digest
                position = Position(path.name, offset + len(line) + 1, (digest or b"").decode())
                if count >= self.batch:
                    break
            if count >= self.batch:
                break
        if position is None or position == since:
            return None
        return _Batch(rows, breaks, position, start.decode(), count)


@dataclass(frozen=True, slots=True)
class _Batch:
    rows: list[Row]
    breaks: list[Break]
    position: Position  # after the batch
    start_hash: str  # where the journal's chain starts (for a node's first batch)
    lines: int


_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


def _check(line: bytes, expected: bytes | None) -> tuple[Row | None, str, bytes | None]:
    """The row of a line (None if it is no record), what is wrong with its link, and its
    hash (None when it has none: the next line then has nothing to link to)."""
    sealed = unseal(line)
    problem = ""
    digest: bytes | None = None
    prev = b""
    if sealed is None:
        problem = NOT_SEALED
    else:
        hashed, prev, digest = sealed
        if hashlib.sha256(hashed).hexdigest().encode() != digest:
            problem = EDITED
        elif expected is not None and prev != expected:
            problem = UNLINKED
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, problem, digest
    if not isinstance(record, dict):
        return None, problem, digest
    record_id, ts = record.get("id"), record.get("ts")
    if not isinstance(record_id, str) or not record_id or type(ts) is not int:
        return None, problem, digest
    kind = _text(record.get("kind")) or "decision"
    row = Row(
        id=record_id,
        ts=ts,
        file_day=0,
        file_offset=0,
        kind=kind,
        result=_text(record.get("result")),
        reason=_text(record.get("reason")),
        outcome=_text(record.get("outcome")),
        number=_text(record.get("number")),
        campaign=_text(record.get("campaign")),
        principal=_text(record.get("principal")),
        shadowed="answer" in record,
        degraded=kind == "decision" and bool(record.get("degraded")),
        hash=(digest or b"").decode(),
        prev=prev.decode(),
        line=line,
    )
    return row, problem, digest


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _id_of(line: bytes) -> str:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return ""
    value = record.get("id") if isinstance(record, dict) else None
    return value if isinstance(value, str) else ""


# --- following (what `serve` runs) -------------------------------------------------------

RETRY_MAX_S = 30.0


def follow(
    settings: CentralSettings,
    directory: Path,
    node: str,
    stop: threading.Event,
    parent: int = 0,
) -> None:
    """Ship as the journal grows until `stop` is set (or the `parent` process is gone):
    every `poll_ms` once caught up. An unreachable store, a journal that cannot be read or
    shipped on: logged, and tried again (1 s, doubling up to 30 s); never raised."""
    store: CentralStore | None = None
    delay = 1.0
    while not stop.is_set():
        if parent and os.getppid() != parent:
            log.error("shipper_parent_gone", parent=parent)
            break
        try:
            if store is None:
                store = open_store(settings)
                version, applied = store.migrate()
                log.info("central_connected", store=store.shown, schema=version, applied=applied)
            report = Shipper(store, directory, node, settings.batch).ship(stop.is_set)
        except CentralUnavailable as exc:
            log.warning("central_unavailable", error=str(exc), retry_s=delay)
            if store is not None:
                store.close()
                store = None
        except JournalProblem as exc:
            log.error("journal_not_shipped", node=node, error=str(exc), retry_s=RETRY_MAX_S)
            with contextlib.suppress(CentralUnavailable):
                if store is not None:
                    store.note_error(node, str(exc))
            delay = RETRY_MAX_S
        except AuditUnavailable as exc:
            log.warning("journal_unavailable", error=str(exc), retry_s=delay)
        else:
            delay = 1.0
            if report.batches:
                log.info(
                    "shipped",
                    node=node,
                    records=report.stored,
                    duplicates=report.duplicates,
                    batches=report.batches,
                    file=report.position.file if report.position else None,
                    offset=report.position.offset if report.position else None,
                )
            for item in report.breaks:
                log.error("chain_break", node=node, where=str(item))
            stop.wait(settings.poll_ms / 1000)
            continue
        stop.wait(delay)
        delay = min(delay * 2, RETRY_MAX_S)
    if store is not None:
        store.close()
