"""Reading the journal: search, stats, verify, follow, prune (the supervisor's tools).

Readers never write a record. They take `audit.lock` shared for an instant to note each
file's size and the head, then read up to those sizes: a batch being written meanwhile is
neither half-read nor mistaken for a torn record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from dialguard.audit.files import (
    GENESIS,
    HEAD_NAME,
    INDEX_ENTRY,
    LOCK_NAME,
    START_NAME,
    AuditUnavailable,
    Head,
    day_of,
    index_key,
    index_path,
    journal_files,
    late_days,
    late_path,
    parse_head,
    unseal,
)

__all__ = [
    "Query",
    "Snapshot",
    "Torn",
    "Verification",
    "files_of",
    "follow",
    "lines",
    "prune",
    "search",
    "snapshot",
    "stats",
    "verify",
]

_CHUNK = 1 << 23
_ID = re.compile(r"^[0-9a-f]{12}[0-9a-f]{14}$")  # service.new_id: ms, process tag, counter


@dataclass(frozen=True, slots=True)
class Torn:
    """A last line without its newline: a write cut short (crash) or a truncated file."""

    path: Path
    offset: int
    size: int

    def __str__(self) -> str:
        return (
            f"{self.path}: torn last record at byte {self.offset} ({self.size} bytes without "
            "an end of line): a write cut short by a crash (never answered) or a truncated file"
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    files: list[tuple[Path, int]]  # journal files in chain order, with the size to read
    head: Head | None
    start: bytes  # the `prev` of the first record of the oldest file


def snapshot(directory: Path) -> Snapshot:
    """The files and their sizes, taken between two batches (shared lock, if any)."""
    lock_fd = -1
    with contextlib.suppress(OSError):
        lock_fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if lock_fd >= 0:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
        paths = journal_files(directory)
        files = []
        for path in paths:
            try:
                files.append((path, path.stat().st_size))
            except OSError as exc:
                raise AuditUnavailable(f"{path}: cannot read: {exc.strerror}") from None
        head = None
        with contextlib.suppress(FileNotFoundError):
            head = parse_head((directory / HEAD_NAME).read_bytes()[:128])
        try:
            raw = (directory / START_NAME).read_bytes().split()
            start = raw[-1] if raw else GENESIS
        except FileNotFoundError:
            start = GENESIS
    except PermissionError as exc:
        raise AuditUnavailable(f"{directory}: cannot read: {exc.strerror}") from None
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)  # releases the lock
    return Snapshot(files, head, start)


def lines(path: Path, size: int, torn: list[Torn], start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, line without newline) of each complete line up to `size`; a last line
    without its newline is appended to `torn`, never yielded."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise AuditUnavailable(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        handle.seek(start)
        offset = start
        rest = b""
        left = size - start
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            data = rest + chunk
            end = data.rfind(b"\n") + 1
            for line in data[:end].split(b"\n")[:-1]:
                yield offset, line
                offset += len(line) + 1
            rest = data[end:]
        if rest:
            torn.append(Torn(path, offset, len(rest)))


# --- search -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    since_ms: int | None = None  # inclusive
    until_ms: int | None = None  # exclusive
    number: str | None = None  # E.164
    campaign: str | None = None
    principal: str | None = None
    result: str | None = None
    reason: str | None = None
    record_id: str | None = None
    kind: str | None = None  # a record kind: "decision", "outcome", "reload"...

    def matches(self, record: dict[str, Any]) -> bool:
        ts = record.get("ts")
        if not isinstance(ts, int):
            return False
        return (
            (self.since_ms is None or ts >= self.since_ms)
            and (self.until_ms is None or ts < self.until_ms)
            and (self.number is None or record.get("number") == self.number)
            and (self.campaign is None or record.get("campaign") == self.campaign)
            and (self.principal is None or record.get("principal") == self.principal)
            and (self.result is None or record.get("result") == self.result)
            and (self.reason is None or record.get("reason") == self.reason)
            and (self.record_id is None or record.get("id") == self.record_id)
            and (self.kind is None or record.get("kind", "decision") == self.kind)
        )

    def needles(self) -> list[bytes]:
        """Byte strings every matching line contains: most lines skip JSON parsing."""
        fields = {
            "id": self.record_id,
            "campaign": self.campaign,
            "principal": self.principal,
            "result": self.result,
            "reason": self.reason,
        }
        return [
            b'"' + name.encode() + b'":' + orjson.dumps(value)
            for name, value in fields.items()
            if value is not None
        ]

    def day_range(self) -> tuple[date | None, date | None]:
        since, until = self.since_ms, self.until_ms
        if self.record_id is not None and _ID.match(self.record_id):
            moment = int(self.record_id[:12], 16)  # the id starts with its decision's ms
            since = moment if since is None else max(since, moment)
            until = moment + 1 if until is None else min(until, moment + 1)
        first = None if since is None else _utc_day(since)
        # A record can land in a later file than its own day (files.py): one day of slack.
        last = None if until is None else _utc_day(max(until - 1, 0)) + timedelta(days=1)
        return first, last


def _utc_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def _in_range(path: Path, first: date | None, last: date | None) -> bool:
    day = day_of(path.name)
    return (first is None or day >= first) and (last is None or day <= last)


def _late_in(path: Path, first: date | None, last: date | None) -> bool:
    """Whether a file after the range holds records dated in it (files.py, `.late`)."""
    if last is None or day_of(path.name) <= last:
        return False
    return any((first is None or day >= first) and day <= last for day in late_days(path))


def files_of(
    directory: Path, query: Query, part: tuple[int, int] = (0, 1)
) -> list[tuple[Path, int]]:
    """(path, size) of the day files that can hold records of `query`'s range; `part`
    (i, n): only the i-th of every n, for n processes sharing the work."""
    shot = snapshot(directory)
    first, last = query.day_range()
    index, parts = part
    chosen = [
        (p, s) for p, s in shot.files if _in_range(p, first, last) or _late_in(p, first, last)
    ]
    return chosen[index::parts]


def search(
    directory: Path, query: Query, torn: list[Torn], part: tuple[int, int] = (0, 1)
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(line, record) of every matching record, in chain order. `part` (i, n): only the
    i-th of every n files of the range, for n processes sharing the work."""
    for path, size in files_of(directory, query, part):
        if query.number is not None:
            found = _by_number(path, size, query, torn)
        else:
            found = _scan(path, size, query, torn)
        yield from found


def _scan(
    path: Path, size: int, query: Query, torn: list[Torn], start: int = 0
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    needles = query.needles()
    for _, line in lines(path, size, torn, start):
        if not all(needle in line for needle in needles):
            continue
        record = _parse(line)
        if record is not None and query.matches(record):
            yield line, record


def _by_number(
    path: Path, size: int, query: Query, torn: list[Torn]
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Through the index: 16 bytes a record, searched with bytes.find (memchr speed)."""
    try:
        index = index_path(path).read_bytes()
    except OSError:
        index = b""
    usable = len(index) - len(index) % INDEX_ENTRY.size
    if not usable:
        yield from _scan(path, size, query, torn)
        return
    key = INDEX_ENTRY.pack(index_key(query.number), 0)[:8]
    offsets = []
    at = index.find(key, 0, usable)
    while at >= 0:
        if at % INDEX_ENTRY.size == 0:  # a key, not the tail of an offset
            offsets.append(INDEX_ENTRY.unpack_from(index, at)[1])
        at = index.find(key, at + 1, usable)
    last_indexed = INDEX_ENTRY.unpack_from(index, usable - INDEX_ENTRY.size)[1]
    with path.open("rb") as handle:
        for offset in offsets:
            if offset >= size:
                continue
            handle.seek(offset)
            line = handle.readline()
            if not line.endswith(b"\n"):
                continue
            record = _parse(line[:-1])
            if record is not None and query.matches(record):
                yield line[:-1], record
        handle.seek(last_indexed)
        covered = last_indexed + len(handle.readline())
    # Records the index does not hold yet (a writer died before writing their entries).
    yield from _scan(path, size, query, torn, start=min(covered, size))


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


# --- stats ------------------------------------------------------------------------------


def stats(records: Iterator[dict[str, Any]], zone: ZoneInfo) -> dict[str, Any]:
    """Decisions, allowed, denied, deny rate; by reason, by campaign, by local hour.

    A denial in shadow mode counts as denied (it is what the law says) and as `shadowed`:
    what would have been blocked, had the campaign been enforcing. `degraded`: decisions
    the campaign's fail mode took (Redis unreachable, the deadline passed)."""
    allowed = denied = shadowed = degraded = 0
    reasons: Counter[tuple[str, str]] = Counter()
    shadowed_reasons: Counter[str] = Counter()
    campaigns: dict[str, Counter[str]] = {}
    hours: dict[int, Counter[str]] = {hour: Counter() for hour in range(24)}
    outcomes: Counter[str] = Counter()
    hour_of = _hour_reader(zone)
    for record in records:
        kind = record.get("kind", "decision")
        if kind != "decision":
            if kind == "outcome":
                outcomes[str(record.get("outcome"))] += 1
            continue
        result = str(record.get("result"))
        reason = str(record.get("reason"))
        if result == "ALLOW":
            allowed += 1
        else:
            denied += 1
        reasons[(result, reason)] += 1
        by_campaign = campaigns.setdefault(str(record.get("campaign")), Counter())
        by_campaign[result] += 1
        if "answer" in record:  # a denial answered ALLOW: shadow mode
            shadowed += 1
            shadowed_reasons[reason] += 1
            by_campaign["shadowed"] += 1
        if record.get("degraded"):
            degraded += 1
        hours[hour_of(int(record["ts"]))][result] += 1
    total = allowed + denied
    return {
        "decisions": total,
        "allowed": allowed,
        "denied": denied,
        "deny_rate": round(denied / total, 4) if total else 0.0,
        "shadowed": shadowed,
        "degraded": degraded,
        "by_reason": [
            {
                "result": result,
                "reason": reason,
                "decisions": count,
                "shadowed": shadowed_reasons[reason] if result == "DENY" else 0,
            }
            for (result, reason), count in sorted(reasons.items(), key=lambda kv: -kv[1])
        ],
        "by_campaign": [
            {
                "campaign": name,
                "decisions": counts["ALLOW"] + counts["DENY"],
                "allowed": counts["ALLOW"],
                "denied": counts["DENY"],
                "deny_rate": round(counts["DENY"] / (counts["ALLOW"] + counts["DENY"]), 4),
                "shadowed": counts["shadowed"],
            }
            for name, counts in sorted(campaigns.items())
        ],
        "by_hour": [
            {"hour": hour, "decisions": c.total(), "allowed": c["ALLOW"], "denied": c["DENY"]}
            for hour, c in hours.items()
            if c.total()
        ],
        "outcomes": dict(sorted(outcomes.items())),
        "timezone": zone.key,
    }


def _hour_reader(zone: ZoneInfo) -> Callable[[int], int]:
    @lru_cache(maxsize=4096)
    def hour(utc_hour: int) -> int:
        # Every zone in use is offset by whole hours from UTC, so the hour is constant
        # within each UTC hour: one conversion per hour, not per record.
        return datetime.fromtimestamp(utc_hour * 3600, zone).hour

    return lambda ms: hour(ms // 3_600_000)


# --- verify -----------------------------------------------------------------------------


@dataclass(slots=True)
class Verification:
    records: int = 0
    files: int = 0
    first_hash: str = ""
    last_hash: str = ""
    problem: str | None = None  # the first break, naming the record
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.problem is None


def verify(directory: Path, first: date | None = None, last: date | None = None) -> Verification:
    """Check the chain over the files of days [first, last] (everything by default)."""
    shot = snapshot(directory)
    result = Verification()
    everything = [path for path, _ in shot.files]
    chosen = [
        (p, s) for p, s in shot.files if _in_range(p, first, last) or _late_in(p, first, last)
    ]
    if not chosen:
        return result
    position = everything.index(chosen[0][0])
    expected: bytes | None = shot.start
    if position:
        expected = _last_hash(*shot.files[position - 1])
        if expected is None:
            result.notes.append(f"{everything[position - 1].name}: no hash to start from")
    elif shot.start != GENESIS:
        result.notes.append(f"the chain starts after pruned files at {shot.start.decode()}")
    head = shot.head
    head_checked = False
    for path, size in chosen:
        result.files += 1
        torn: list[Torn] = []
        for number, (offset, line) in enumerate(lines(path, size, torn), start=1):
            where = f"{path.name} line {number}"
            sealed = unseal(line)
            if sealed is None:
                result.problem = f"{where}{_id_of(line)}: not a hash-chained record (inserted?)"
                return result
            hashed, prev, digest = sealed
            if hashlib.sha256(hashed).hexdigest().encode() != digest:
                result.problem = (
                    f"{where}{_id_of(line)}: its content does not match its hash: edited"
                )
                return result
            if expected is not None and prev != expected:
                result.problem = (
                    f"{where}{_id_of(line)}: does not follow the record before it: "
                    "a record was removed, inserted or reordered here"
                )
                return result
            expected = digest
            if not result.first_hash:
                result.first_hash = digest.decode()
            result.last_hash = digest.decode()
            result.records += 1
            if head is not None and path.name == head.name and offset + len(line) + 1 == head.size:
                head_checked = digest == head.hash
        if torn:
            result.problem = str(torn[0])
            return result
    ends_here = last is None or chosen[-1][0] == everything[-1]
    if head is not None and ends_here and not head_checked:
        names = {p.name: s for p, s in shot.files}
        if head.name not in names:
            result.problem = f"{head.name}: the file holding the chain's head is missing: removed"
        else:
            result.problem = (
                f"{head.name}: the chain's head ({HEAD_NAME}: {head.size} bytes, last hash "
                f"{head.hash.decode()[:16]}...) is not in the file: records removed (truncated)"
            )
    for path in sorted(directory.glob("audit-*.jsonl.torn")):
        result.notes.append(f"{path.name}: torn records moved aside by the writer after a crash")
    return result


def _last_hash(path: Path, size: int) -> bytes | None:
    last = b""
    with path.open("rb") as handle:
        handle.seek(max(0, size - (1 << 16)))
        tail = handle.read(size - handle.tell())
    parts = tail.split(b"\n")
    if len(parts) >= 2:
        last = parts[-2]
    sealed = unseal(last) if last else None
    return None if sealed is None else sealed[2]


def _id_of(line: bytes) -> str:
    record = _parse(line)
    if record is None or not isinstance(record.get("id"), str):
        return ""
    return f" (id {record['id']})"


# --- follow (tail -f) -------------------------------------------------------------------


def follow(
    directory: Path,
    count: int,
    *,
    keep_following: bool,
    poll_s: float = 0.2,
    torn: list[Torn] | None = None,
) -> Iterator[bytes]:
    """The last `count` records, then (with `keep_following`) each new one as it lands."""
    torn = [] if torn is None else torn
    shot = snapshot(directory)
    recent: list[bytes] = []
    for path, size in reversed(shot.files):
        recent = [line for _, line in lines(path, size, torn)] + recent
        if len(recent) >= count:
            break
    yield from recent[len(recent) - count :] if count else []
    if not keep_following:
        return
    position = {path: size for path, size in shot.files}
    while True:
        fresh = snapshot(directory)
        for path, size in fresh.files:
            start = position.get(path, 0)
            if size > start:
                complete = [(o, line) for o, line in lines(path, size, [], start)]
                for _, line in complete:
                    yield line
                if complete:
                    position[path] = complete[-1][0] + len(complete[-1][1]) + 1
        time.sleep(poll_s)


# --- prune ------------------------------------------------------------------------------


def prune(directory: Path, retention_days: int, today: date, *, dry_run: bool) -> list[Path]:
    """Remove the day files older than the retention period; keep the chain checkable.

    `audit.start` receives the last hash of the newest removed file: `verify` then checks
    the remaining chain from there, so removing a file outside this command still shows.
    """
    cutoff = today - timedelta(days=retention_days)
    lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        files = journal_files(directory)
        old = [path for path in files[:-1] if day_of(path.name) < cutoff]  # never the newest
        if not old or dry_run:
            return old
        last = _last_hash(old[-1], old[-1].stat().st_size)
        if last is None:
            raise AuditUnavailable(f"{old[-1]}: its last record is not hash-chained; not pruned")
        start = directory / START_NAME
        temporary = directory / (START_NAME + ".new")
        temporary.write_bytes(old[-1].name.encode() + b" " + last + b"\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, start)
        for path in old:
            for doomed in (path, index_path(path), late_path(path), Path(f"{path}.torn")):
                with contextlib.suppress(FileNotFoundError):
                    doomed.unlink()
        return old
    finally:
        os.close(lock_fd)
