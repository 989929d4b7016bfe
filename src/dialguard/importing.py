"""Import one file: stream its rows, checked line by line (dialguard.import_files), into
Redis (dialguard.store.loading), with a rejects file and a summary. No terminal here: the
CLI (dialguard.cli.imports) shows the progress and the messages this reports.

File formats: docs/imports.md; what happens in Redis: docs/data-model.md."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Protocol
from zoneinfo import ZoneInfo

from dialguard import import_files
from dialguard.audit import Journal
from dialguard.csv_cells import cells
from dialguard.import_files import Header, Rejected
from dialguard.import_halves import HalfFailed, Other
from dialguard.import_reading import READ_BYTES, blocks, decoded
from dialguard.service import new_id
from dialguard.store import ListBusy, OldLayout, Store
from dialguard.store.loading import Loader, Summary
from dialguard.store.packed import Gathered

__all__ = [
    "Accounting",
    "Check",
    "ImportFailed",
    "Notify",
    "Outcome",
    "Progress",
    "Rejects",
    "Request",
    "run_import",
]

# A message for the person running the import (the first bad lines, then how many more).
Notify = Callable[[str], None]


class Progress(Protocol):
    """Where an import says how far it got (the CLI draws a bar; a program may ignore it)."""

    def start(self, label: str, total_bytes: int) -> None: ...

    def advance(self, position: int, rows: int, seconds: float) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, label: str, total_bytes: int) -> None:
        pass

    def advance(self, position: int, rows: int, seconds: float) -> None:
        pass

    def finish(self) -> None:
        pass


# Rows per chunk: the unit of the progress bar and of the lock's renewal and, for
# consents and contracts, of one script call (a few milliseconds of Redis at most).
CHUNK_ROWS = 5000


class ImportFailed(Exception):
    """One line for the user; nothing (more) was loaded."""


class Rejects:
    """Bad lines: the first few told to the person, every one in a CSV file beside the input."""

    def __init__(self, source: Path, path: Path | None, notify: Notify) -> None:
        self.source = source
        self._notify = notify
        self.path = path or source.with_name(source.name + ".rejects.csv")
        self.count = 0
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def add(self, line: int, rejected: Rejected) -> None:
        self.count += 1
        if self.count <= import_files.MAX_REPORTED:
            self._notify(f"{self.source}: line {line}: {rejected.message}")
        if self._writer is None:
            try:
                self._handle = self.path.open("w", encoding="utf-8", newline="")
            except OSError as exc:
                message = f"{self.path}: cannot write the rejects file: {exc.strerror}"
                raise ImportFailed(message) from None
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["line", "error", "content"])
        self._writer.writerow(cells([line, rejected.message, rejected.text]))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self.count > import_files.MAX_REPORTED:
            more = self.count - import_files.MAX_REPORTED
            self._notify(f"{self.source}: ... and {more} more bad lines")


@dataclass
class Check:
    """What one pass over the file found."""

    rows: int = 0
    lines: int = 0  # data lines read, blank ones included
    seconds: float = 0.0


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise ImportFailed(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImportFailed(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise ImportFailed(f"{path}: cannot read: {exc.strerror}") from None


def read_header(path: Path, kind: str) -> Header:
    with _open(path) as handle:
        first = next(decoded(handle), None)
    return import_files.read_header(kind, first)


async def scan(
    path: Path,
    header: Header,
    zone: ZoneInfo,
    rejects: Rejects | None,
    loader: Loader | None,
    progress: Progress,
    label: str,
) -> Check:
    """One pass over the file: its rows to `loader` (None: only check them)."""
    check = Check()
    started = time.monotonic()
    size = path.stat().st_size or 1
    progress.start(label, size)
    other: Other | None = None
    with _open(path) as handle:
        lines = decoded(handle)
        next(lines, None)  # the header, checked already
        sink = loader.sink if loader is not None else None
        if sink is not None and loader is not None:
            half = _second_half(handle, size) if loader.building else -1
            if half > 0:
                ids = await loader.known_principals()
                try:
                    other = Other(path, half, header, zone.key, sink.value_limit, ids)
                except OSError:  # no process to be had: read it whole
                    half = -1
            chunks = import_files.blocks(header, blocks(handle, half), zone, sink)
        else:
            chunks = import_files.chunks(header, lines, zone, CHUNK_ROWS, sink)
        try:
            for chunk in chunks:
                if rejects is not None:
                    for number, rejected in chunk.rejected:
                        rejects.add(number, rejected)
                check.rows += len(chunk)
                check.lines = chunk.last_line - 1
                if loader is not None:
                    loader.reading(handle.tell(), size)
                    await loader.feed_chunk(chunk)
                    if other is not None:
                        await other.answer(loader.principal_id)
                progress.advance(handle.tell(), check.rows, time.monotonic() - started)
            if other is not None and loader is not None and sink is not None:
                await _join(other, loader, sink, check, rejects)
        except HalfFailed as exc:
            raise ImportFailed(f"{path}: {exc}") from None
        finally:
            if other is not None:
                other.close()
    progress.advance(size, check.rows, time.monotonic() - started)
    check.seconds = time.monotonic() - started
    return check


# A build of consents or contracts from a file this big has its second half read by
# another process (import_halves): ~1.5 million lines, where starting it (~0.5 s) is
# worth it.
_HALVES_BYTES = 100 << 20


def _second_half(handle: IO[bytes], size: int) -> int:
    """Where the line at or after the middle of the file starts (-1: read it whole, on
    one core or too small to share). The handle's position is kept."""
    if size < _HALVES_BYTES or _cores() < 2:
        return -1
    at = handle.tell()
    handle.seek(max(size // 2, at))
    while (piece := handle.readline(READ_BYTES)) and piece[-1] != 10:  # 10: b"\n"
        pass
    middle = handle.tell()
    handle.seek(at)
    return middle if at < middle < size else -1


def _cores() -> int:
    """The cores this process may run on (taskset, a container's cpuset): on one, a
    second process would only take turns with the first."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


async def _join(
    other: Other, loader: Loader, sink: Gathered, check: Check, rejects: Rejects | None
) -> None:
    """The second half, once read by the other process, after the first."""
    renewed = time.monotonic()
    while not await other.answer(loader.principal_id):
        if time.monotonic() - renewed > 1:
            await loader.renew()
            renewed = time.monotonic()
        await asyncio.sleep(0.01)
    half = other.half
    for piece in other.pieces():
        sink.extend(piece)
    if rejects is not None:
        for number, rejected in half.rejected:
            rejects.add(check.lines + 1 + number, rejected)
    check.rows += half.rows
    check.lines += half.lines
    await loader.feed_chunk(import_files.Chunk(gathered=half.rows, last_line=check.lines + 1))


@dataclass(frozen=True)
class Request:
    kind: str
    path: Path
    mode: str  # replace, add, remove
    zone: ZoneInfo
    checked_on: date | None
    ref: str
    dry_run: bool
    rejects_path: Path | None
    max_rejects: int
    operator: str = ""


@dataclass(frozen=True)
class Accounting:
    """Where an import is accounted for: its audit record goes to `journal`, a compressed
    copy of its file to `kept_dir`, named by its SHA-256 (what a list held on any day can
    be shown and rebuilt)."""

    journal: Journal
    kept_dir: Path
    node: str


@dataclass
class Outcome:
    check: Check
    rejected: int
    rejects_path: Path | None
    summary: Summary | None  # None for a dry run
    refusal: str  # a dry run: why the import would be refused, or ''
    seconds: float  # from start to end: reading, checking, writing, switching, freeing


async def run_import(
    request: Request,
    store: Store | None,
    *,
    notify: Notify = lambda _: None,
    progress: Progress | None = None,
    accounting: Accounting | None = None,
) -> Outcome:
    """Check and load one file (`store` None: a dry run). Raises ImportFailed (nothing
    loaded, one line) and BadImportFile (the file is not of its kind)."""
    started = time.monotonic()
    progress = progress or NoProgress()
    header = read_header(request.path, request.kind)
    rejects = Rejects(request.path, request.rejects_path, notify)
    # Changes made in place are visible as they are written, so a file that will be
    # refused must be found out first: check it whole, then load it.
    check_first = request.dry_run or (request.mode != "replace" and request.kind != "bloctel")
    try:
        check = None
        if check_first:
            check = await scan(
                request.path, header, request.zone, rejects, None, progress, "checking"
            )
            refusal = _refusal(request, rejects, check.rows)
            if request.dry_run:
                seconds = time.monotonic() - started
                return Outcome(check, rejects.count, _written(rejects), None, refusal, seconds)
            if refusal:
                raise ImportFailed(refusal)
        assert store is not None
        loader = Loader(
            store.lists,
            request.kind,
            request.mode,
            source=request.path.name,
            now=datetime.now(UTC),
            checked_on=request.checked_on,
            ref=request.ref,
        )
        try:
            await loader.open()
        except (ListBusy, OldLayout) as exc:
            raise ImportFailed(str(exc)) from None
        recorded: list[str] = []
        keeping: asyncio.Future[tuple[str, Path | None]] | None = None
        try:
            sha256 = ""
            if accounting is not None and loader.building:
                # Hashed and kept while the file is read, in a thread (hashlib and zlib let
                # go of the GIL: another core does it); awaited before the record.
                keeping = asyncio.ensure_future(
                    asyncio.to_thread(
                        _hash_and_keep, request.path, accounting.kept_dir, request.kind
                    )
                )
            elif accounting is not None:
                # In place, each row is visible as it is written: the record goes first
                # (its counts are those of the check; import-done gives the outcome).
                sha256 = await asyncio.to_thread(_sha256, request.path)
                intent = Summary(request.kind, request.mode, rows=check.rows if check else 0)
                intent.version = loader.target
                recorded.append(await _account(accounting, request, sha256, rejects.count, intent))
            loaded = await scan(
                request.path,
                header,
                request.zone,
                None if check_first else rejects,
                loader,
                progress,
                "loading",
            )
            refusal = "" if check_first else _refusal(request, rejects, loaded.rows)
            if refusal:
                raise ImportFailed(refusal)
            before_swap = None
            if accounting is not None and not recorded:

                async def before_swap(summary: Summary) -> None:
                    digest = (await keeping)[0] if keeping is not None else sha256
                    recorded.append(
                        await _account(accounting, request, digest, rejects.count, summary)
                    )

            summary = await loader.commit(before_swap)
            if accounting is not None and recorded:
                await _account_done(accounting, request, recorded[0], summary)
        except BaseException:
            await loader.abort()
            if keeping is not None and not recorded:
                await _unkeep(keeping)
            raise
    finally:
        progress.finish()
        rejects.close()
    seconds = time.monotonic() - started
    return Outcome(check or loaded, rejects.count, _written(rejects), summary, "", seconds)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with _open(path) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_and_keep(source: Path, kept_dir: Path, kind: str) -> tuple[str, Path | None]:
    """The file's SHA-256 and its gzip copy, named by it, in one reading (as `_keep`):
    the copy when this call wrote it (an identical file may be kept already)."""
    digest = hashlib.sha256()
    partial: Path | None = None
    try:
        kept_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=kept_dir, suffix=".part", delete=False) as raw:
            partial = Path(raw.name)
            with (
                _open(source) as handle,
                gzip.GzipFile("", "wb", _KEEP_LEVEL, raw, mtime=0) as out,
            ):
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
        sha256 = digest.hexdigest()
        kept = kept_dir / kept_name(kind, sha256)
        if kept.exists():
            partial.unlink()
            return sha256, None
        os.chmod(partial, 0o600)
        os.replace(partial, kept)
        return sha256, kept
    except OSError as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise ImportFailed(f"{kept_dir}: cannot keep a copy of the file: {exc.strerror}") from None


async def _unkeep(keeping: asyncio.Future[tuple[str, Path | None]]) -> None:
    """An import that failed keeps no copy it wrote (the copies are of imported files)."""
    with contextlib.suppress(Exception):
        _, written = await keeping
        if written is not None:
            written.unlink(missing_ok=True)


def kept_name(kind: str, sha256: str) -> str:
    return f"{sha256}.{kind}.csv.gz"


async def _account(
    accounting: Accounting, request: Request, sha256: str, rejected: int, summary: Summary
) -> str:
    """Keep the file, then journal the import: both before the list goes in force. The
    record's id."""
    kept = accounting.kept_dir / kept_name(request.kind, sha256)
    await asyncio.to_thread(_keep, request.path, kept)
    now = datetime.now(UTC)
    record_id = new_id(now)
    await accounting.journal.append(
        {
            "id": record_id,
            "ts": int(now.timestamp() * 1000),
            "node": accounting.node,
            "kind": "import",
            "list": request.kind,
            "mode": request.mode,
            "file": request.path.name,
            "sha256": sha256,
            "kept": kept.name,
            "rows": summary.rows,
            "new": summary.changed,
            "unchanged": summary.unchanged,
            "rejected": rejected,
            "version": summary.version,
            "size": summary.size,
            "ref": request.ref,
            "checked_on": request.checked_on.isoformat() if request.checked_on else None,
            "operator": request.operator,
            "adapter": "cli",
        }
    )
    return record_id


async def _account_done(
    accounting: Accounting, request: Request, import_id: str, summary: Summary
) -> None:
    """The import is in force: a rebuild replays only imports that got this far."""
    now = datetime.now(UTC)
    await accounting.journal.append(
        {
            "id": new_id(now),
            "ts": int(now.timestamp() * 1000),
            "node": accounting.node,
            "kind": "import-done",
            "list": request.kind,
            "import": import_id,
            "version": summary.version,
            "new": summary.changed,
            "unchanged": summary.unchanged,
            "size": summary.size,
            "operator": request.operator,
            "adapter": "cli",
        }
    )


# gzip's fastest level: a 10-million-consent file (650 MB) took ~40 s of the import's CPU
# at level 6, ~11 s at level 1, for a copy ~23 % larger (31 % of the file instead of 25 %).
_KEEP_LEVEL = 1


def _keep(source: Path, kept: Path) -> None:
    """A gzip copy of the file, written whole (a temporary name, fsync, rename) or not at
    all; an identical file already kept is kept once."""
    if kept.exists():
        return
    try:
        kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = kept.with_name(kept.name + ".part")
        with _open(source) as handle, open(partial, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_KEEP_LEVEL, mtime=0) as out:
                shutil.copyfileobj(handle, out, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(partial, 0o600)
        os.replace(partial, kept)
    except OSError as exc:
        raise ImportFailed(
            f"{kept.parent}: cannot keep a copy of the file: {exc.strerror}"
        ) from None


def _written(rejects: Rejects) -> Path | None:
    return rejects.path if rejects.count else None


def _refusal(request: Request, rejects: Rejects, rows: int) -> str:
    """Why the file must not be loaded, or ''."""
    name = request.path
    if rejects.count > request.max_rejects:
        lines = "line" if rejects.count == 1 else "lines"
        allowed = f" (--max-rejects {request.max_rejects})" if request.max_rejects else ""
        return (
            f"{name}: {rejects.count} bad {lines}{allowed}; nothing loaded"
            f" (all listed in {rejects.path})"
        )
    if request.mode == "replace" and rows == 0:
        return f"{name}: no data rows; refusing to replace the {request.kind} list with nothing"
    if request.kind == "bloctel" and rows == 0:
        return f"{name}: no data rows; a registry result set needs at least one number"
    return ""
