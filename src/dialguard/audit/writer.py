"""The journal's one writer: group commit, hash chain, flock across processes.

`append` encodes the record on the caller's thread (orjson, under a microsecond) and hands
the bytes to one writer thread per process, then waits for them to be durable. The writer
takes everything that arrived while it was busy as one batch and, holding `audit.lock`
(flock) so that the processes sharing the directory take turns:

1. reads the chain's head (`audit.head`: file, size, last hash) and checks it against the
   file (a mismatch means a writer died between its fsync and its head update, or left a
   torn line: the file's tail is re-read, the index topped up, a torn line moved aside);
2. seals each record (`prev`, then the SHA-256 `hash`), writes the batch with one write
   and one fdatasync per file, then the index entries and the new head (neither fsync'd:
   both are rebuilt from the journal after a crash);
3. releases the lock and wakes the waiting callers, one event-loop wake-up per batch.

Hashing and index writes happen here, off the event loop. write and fdatasync release the
GIL, so the loop is never held behind the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import threading
import time
import weakref
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from dialguard import snapshot
from dialguard.audit.files import (
    GENESIS,
    HEAD_NAME,
    INDEX_ENTRY,
    LOCK_NAME,
    START_NAME,
    AuditUnavailable,
    Head,
    day_name,
    day_of,
    index_key,
    journal_files,
    parse_head,
    seal,
    unseal,
)
from dialguard.model import (
    SHADOW_PREFIX,
    CallerId,
    CallRequest,
    Campaign,
    Decision,
    Mode,
    Result,
)
from dialguard.telemetry import Telemetry

__all__ = ["Journal", "decision_record"]

log = structlog.get_logger("dialguard.audit")

_TAIL_CHUNK = 1 << 16
_Entry = tuple[int, bytes, object, "asyncio.Future[None]"]  # day, body, number, waiter

_journals: weakref.WeakSet[Journal] = weakref.WeakSet()


def _after_fork() -> None:
    # `serve --workers N` forks: a child must not share the parent's flock (one open file
    # description would let both hold it) nor wait on a writer thread it does not have.
    for journal in list(_journals):
        journal._reset()


os.register_at_fork(after_in_child=_after_fork)


class Journal:
    """Appends hash-chained records to `audit-YYYY-MM-DD.jsonl` (UTC days) in `directory`.

    `append` returns once the record is fsync'd; several processes may append to one
    directory (they take turns under `audit.lock`, one batch at a time, so the chain is
    one sequence across them).
    """

    def __init__(self, directory: Path, telemetry: Telemetry | None = None) -> None:
        self.directory = directory
        self.telemetry = telemetry  # batch sizes, fsync times, failures (None: not counted)
        self._writer = _Writer(directory, telemetry)
        self._failure: str | None = None  # why the last batch failed; None once one succeeds
        self._reset()
        _journals.add(self)

    def problem(self) -> str | None:
        """Why an append would fail now, in one line, or None: the last batch failed, or
        the directory cannot be written. Cheap (a few system calls, no record written)."""
        problem = _directory_problem(self.directory)
        if problem is not None:
            return problem
        failure = self._failure
        # A node found not ready gets no calls, so no append would ever clear the failure:
        # a file written and flushed in the directory stands in for one. A fault of the
        # journal file itself is then found again by the next call.
        if failure is not None and _probe_write(self.directory) is not None:
            return f"the last append failed: {failure}"
        return None

    def _reset(self) -> None:
        self._starting = threading.Lock()
        # A queue written in C: a put is one call, no lock and Condition of Python's. (Not
        # measurably cheaper at 1,000 records/s: the wake-up of the writer is the cost.)
        self._queue: queue.SimpleQueue[_Entry] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer.close()

    async def append(self, record: dict[str, Any]) -> None:
        """Return once `record` is durable, with `prev` and `hash` added on disk; raise
        AuditUnavailable if it cannot be made durable."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # orjson: compact UTF-8 JSON, the bytes the hash covers; a fifteenth of json's time.
        entry = (record["ts"] // 86_400_000, orjson.dumps(record), record.get("number"), future)
        self._queue.put(entry)
        if self._thread is None:
            with self._starting:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, args=(self._queue,), name="dialguard-journal", daemon=True
                    )
                    self._thread.start()
        await future

    def _run(self, entries: queue.SimpleQueue[_Entry]) -> None:
        while True:
            # Everything that arrived while the last batch was written is the next batch.
            batch = [entries.get()]
            for _ in range(entries.qsize()):  # this thread alone takes from the queue
                batch.append(entries.get_nowait())
            error: AuditUnavailable | None = None
            try:
                self._writer.write_batch([(day, body, number) for day, body, number, _ in batch])
            except AuditUnavailable as exc:
                error = exc
            except Exception as exc:  # never leave a caller waiting forever
                error = AuditUnavailable(f"{self.directory}: audit writer failed: {exc!r}")
            self._failure = None if error is None else str(error)
            if self.telemetry is not None:
                self.telemetry.journal_batch.observe(len(batch))
                if error is not None:
                    self.telemetry.journal_errors += 1
            # One wake-up of each event loop per batch, not one per record.
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for *_, future in batch:
                by_loop.setdefault(future.get_loop(), []).append(future)
            for loop, futures in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, futures, error)


_EPOCH_DAY = date(1970, 1, 1)


def _directory_problem(directory: Path) -> str | None:
    # The directory is made at the first append: until then, its nearest existing
    # ancestor must let it be made. Root passes os.access on a read-write file system
    # whatever the modes; a file in the way or a read-only mount still show.
    path = directory
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    try:
        if not path.is_dir():
            return f"{path}: not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path}: not writable"
        if os.statvfs(path).f_bavail == 0:
            return f"{path}: no space left"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


def _probe_write(directory: Path) -> str | None:
    """Why a small file cannot be written, flushed and removed in `directory`, or None."""
    probe = directory / f".ready-probe.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)  # as the first append would
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ready?\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        return f"{directory}: {exc.strerror or exc}"
    return None


def _settle(futures: list[asyncio.Future[None]], error: AuditUnavailable | None) -> None:
    for future in futures:
        if future.done():  # its session was cancelled meanwhile
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class _Writer:
    """The writer thread's files and its view of the chain's head (see the module doc)."""

    def __init__(self, directory: Path, telemetry: Telemetry | None = None) -> None:
        self.directory = directory
        self.telemetry = telemetry
        self.lock_fd = -1
        self.head_fd = -1
        self.fd = -1  # the newest journal file
        self.idx_fd = -1
        self.name = ""  # its name; "" before the first record of a journal
        self.day = 0  # its UTC day, as days since 1970-01-01
        self.size = 0  # its size after our last batch
        self.last = GENESIS  # the chain's last hash after our last batch

    def close(self) -> None:
        self._close_file()
        for fd in (self.lock_fd, self.head_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.lock_fd = self.head_fd = -1

    def _close_file(self) -> None:
        for fd in (self.fd, self.idx_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.idx_fd = -1
        self.name, self.size, self.last = "", 0, GENESIS

    def write_batch(self, batch: list[tuple[int, bytes, object]]) -> None:
        try:
            if self.lock_fd < 0:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.lock_fd = self._open(LOCK_NAME, os.O_RDWR | os.O_CREAT)
                self.head_fd = self._open(HEAD_NAME, os.O_RDWR | os.O_CREAT)
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                self._sync_head()
                self._write(batch)
            finally:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        except OSError as exc:
            self.close()  # start from the files again next time
            raise AuditUnavailable(
                f"{self.directory}: cannot write the audit record: {exc.strerror or exc}"
            ) from None
        except AuditUnavailable:
            self.close()
            raise

    def _open(self, name: str, flags: int) -> int:
        return os.open(self.directory / name, flags | os.O_CLOEXEC, 0o600)

    def _write(self, batch: list[tuple[int, bytes, object]]) -> None:
        lines: list[bytes] = []
        entries: list[bytes] = []
        late: set[int] = set()
        offset = self.size
        for day, body, number in batch:
            name = day_name(day)
            if name > self.name:  # a new day (never back to a closed one: see files.py)
                self._flush(lines, entries, late)
                lines, entries, late = [], [], set()
                self._switch(name)
                offset = self.size
            elif day < self.day - 1:  # beyond the readers' day of slack (files.py)
                late.add(day)
            line, self.last = seal(body, self.last)
            entries.append(INDEX_ENTRY.pack(index_key(number), offset))
            offset += len(line)
            lines.append(line)
        self._flush(lines, entries, late)
        self._write_head()

    def _flush(self, lines: list[bytes], entries: list[bytes], late: set[int]) -> None:
        if not lines:
            return
        if late:
            self._note_late(late)
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        started = time.perf_counter()
        os.fdatasync(self.fd)
        if self.telemetry is not None:
            self.telemetry.journal_fsync.observe(time.perf_counter() - started)
        self.size += len(data)
        # The index after the journal: an entry never points past a durable record.
        os.write(self.idx_fd, b"".join(entries))

    def _note_late(self, days: set[int]) -> None:
        """Name the late records' days before they are durable: a record found on disk
        always has its day here (a day named for records never written costs a reader one
        file more)."""
        text = "".join(day_name(day)[6:16] + "\n" for day in sorted(days))
        fd = self._open(
            self.name.removesuffix(".jsonl") + ".late", os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_head(self) -> None:
        os.pwrite(self.head_fd, Head(self.name, self.size, self.last).encode(), 0)

    def _switch(self, name: str) -> None:
        """Start (or continue) the day file `name`, chained after the current head."""
        last = self.last
        path = self.directory / name
        existed = path.exists()
        self._open_file(name, os.O_CREAT)
        if not existed:
            # The new name must survive a crash with the records fsync'd into it.
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        if self.size == 0:
            self.last = last
        # Announce the new file at once: a writer whose record belongs to the old day must
        # see that the chain has moved on, even if we die before our batch is durable.
        self._write_head()

    def _open_file(self, name: str, create: int = 0) -> None:
        self._close_file()
        self.fd = self._open(name, os.O_RDWR | os.O_APPEND | create)
        # O_APPEND: after the truncation in _recover, and from every process, entries go last.
        index = name.removesuffix(".jsonl") + ".idx"
        self.idx_fd = self._open(index, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        self.name = name
        self.day = (day_of(name) - _EPOCH_DAY).days
        self._recover()

    def _sync_head(self) -> None:
        """Bring our view of the chain up to date with what the other writers did."""
        head = parse_head(os.pread(self.head_fd, 128, 0))
        if head is not None and head.name == self.name:
            if head.size == self.size and head.hash == self.last:
                return  # nobody wrote since our last batch
            if os.fstat(self.fd).st_size == head.size:
                self.size, self.last = head.size, head.hash  # another process's batch
                return
            self._recover()  # a writer died between its fsync and its head update
        else:
            files = journal_files(self.directory)
            if not files:
                if head is not None:
                    raise AuditUnavailable(
                        f"{self.directory / head.name}: named by {HEAD_NAME} but missing: "
                        "the journal was tampered with (run `dialguard audit verify`)"
                    )
                self._close_file()
                self.last = self._start_hash()
                return
            self._open_file(files[-1].name)
        if head is None or head.name != self.name:
            if head is not None and head.name > self.name:
                raise AuditUnavailable(
                    f"{self.directory / head.name}: named by {HEAD_NAME} but missing: "
                    "the journal was tampered with (run `dialguard audit verify`)"
                )
            return
        if self.size < head.size or (self.size == head.size and self.last != head.hash):
            raise AuditUnavailable(
                f"{self.directory / self.name}: is {self.size} bytes but {HEAD_NAME} says "
                f"{head.size} ending in {head.hash.decode()[:12]}: truncated or edited; "
                "run `dialguard audit verify`"
            )

    def _recover(self) -> None:
        """Read the file's tail: its size and last hash, the index topped up to match, a
        torn last line (a crash mid-write: never answered) moved aside to `.torn`."""
        size = os.fstat(self.fd).st_size
        indexed = os.fstat(self.idx_fd).st_size // INDEX_ENTRY.size
        start, keep = 0, 0
        if indexed:
            keep = (indexed - 1) * INDEX_ENTRY.size
            _, offset = INDEX_ENTRY.unpack(os.pread(self.idx_fd, INDEX_ENTRY.size, keep))
            if offset < size and (offset == 0 or os.pread(self.fd, 1, offset - 1) == b"\n"):
                start = offset  # re-read the last indexed record: it gives the hash
            else:
                keep = 0  # an index that does not match the file: rebuild it whole
        data = _pread_all(self.fd, size - start, start)
        end = data.rfind(b"\n") + 1
        entries: list[bytes] = []
        last_line = b""
        position = start
        for line in data[:end].split(b"\n")[:-1]:
            entries.append(INDEX_ENTRY.pack(_line_key(line), position))
            position += len(line) + 1
            last_line = line
        if end < len(data):
            self._move_torn(data[end:], start + end)
        os.ftruncate(self.idx_fd, keep)
        os.write(self.idx_fd, b"".join(entries))
        self.size = start + end
        if not last_line:
            self.last = self._previous_hash()
            return
        sealed = unseal(last_line)
        if sealed is None:
            raise AuditUnavailable(
                f"{self.directory / self.name}: its last record is not hash-chained (written "
                "before the chain, or edited): move the file aside, then run "
                "`dialguard audit verify`"
            )
        self.last = sealed[2]

    def _move_torn(self, torn: bytes, offset: int) -> None:
        path = self.directory / (self.name + ".torn")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"%d " % offset + torn + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.ftruncate(self.fd, offset)
        os.fsync(self.fd)
        log.warning(
            "audit_torn_record_moved",
            file=str(self.directory / self.name),
            offset=offset,
            size=len(torn),
            moved_to=str(path),
        )

    def _previous_hash(self) -> bytes:
        for path in reversed(journal_files(self.directory)):
            if path.name >= self.name:
                continue
            with path.open("rb") as handle:
                line = _last_line(handle.fileno(), os.fstat(handle.fileno()).st_size)
            if line:
                sealed = unseal(line)
                if sealed is None:
                    raise AuditUnavailable(f"{path}: its last record is not hash-chained")
                return sealed[2]
        return self._start_hash()

    def _start_hash(self) -> bytes:
        """GENESIS, or where `audit prune` says the remaining chain starts."""
        try:
            raw = (self.directory / START_NAME).read_bytes().split()
        except FileNotFoundError:
            return GENESIS
        return raw[-1] if raw else GENESIS


def _line_key(line: bytes) -> int:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return 0
    return index_key(record.get("number")) if isinstance(record, dict) else 0


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 24), offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _last_line(fd: int, size: int) -> bytes:
    """The last complete line of a file (without its newline), b"" if none."""
    end = size
    tail = b""
    while end > 0:
        begin = max(0, end - _TAIL_CHUNK)
        tail = os.pread(fd, end - begin, begin) + tail
        end = begin
        stop = tail.rfind(b"\n")
        if stop < 0:
            continue
        before = tail.rfind(b"\n", 0, stop)
        if before >= 0 or end == 0:
            return tail[before + 1 : stop]
    return b""


def decision_record(
    *,
    decision_id: str,
    ts: datetime,
    node: str,
    request: CallRequest,
    campaign: Campaign | None,
    decision: Decision,
    latency_us: int,
    shadow: bool = False,
) -> dict[str, Any]:
    """The audit record of one decision, with the fields DESIGN.md lists. In shadow mode
    `mode` says so and, for a denial, `answer` what the dialer was told instead."""
    record = {
        "id": decision_id,
        "ts": int(ts.timestamp() * 1000),
        "node": node,
        "kind": "decision",
        "result": decision.result.value,
        "reason": decision.reason.value,
        # RuleResult.as_json's shape, built inline (on every decision's path); orjson
        # writes the enums as their values.
        "rules": [
            {"rule": rule, "outcome": outcome, "reason": reason, "detail": detail}
            for rule, outcome, reason, detail in decision.rules
        ],
        "number_raw": request.number_raw,
        "number": decision.number.e164 if decision.number else None,
        "campaign": request.campaign,
        "principal": campaign.principal if campaign else None,
        "purpose": campaign.purpose.value if campaign else None,
        "sector": campaign.sector.value if campaign else None,
        "local_time": decision.local_time,
        "attempts_30d": decision.attempts_30d,
        "evidence": dict(decision.evidence),
        "policy": decision.policy.as_json(),
        "channel": request.channel,
        "uniqueid": request.uniqueid,
        "callerid": request.callerid,
        "adapter": request.adapter,
        "latency_us": latency_us,
        "degraded": decision.degraded,
        # What the rules read, for `audit replay` (dialguard.snapshot).
        "facts": snapshot.encode(
            decision, campaign, bool(request.callingpres) and _restricted(request)
        ),
    }
    if shadow:
        record["mode"] = Mode.SHADOW.value
        if not decision.allowed:
            reason = SHADOW_PREFIX + decision.reason.value
            record["answer"] = {"result": Result.ALLOW.value, "reason": reason}
    return record


def _restricted(request: CallRequest) -> bool:
    return bool(request.callingpres) and CallerId.of(request).restricted
