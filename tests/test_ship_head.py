"""The shipper reads the journal's head without the writer's lock when the head proves
itself, so that a shipper kept off the CPU (it runs SCHED_IDLE) can never hold up the
writer of every decision; a torn or unprovable head is read under the lock."""

from __future__ import annotations

import fcntl
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from dialguard.audit.files import HEAD_NAME, LOCK_NAME, Head, parse_head
from dialguard.central.ship import read_head
from tests.test_audit import record, write

NOON = int(datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp() * 1000)


def held(directory: Path) -> int:
    """The journal's lock taken as its writer takes it around a batch."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_true_head_is_read_while_the_writer_holds_its_lock(tmp_path: Path) -> None:
    write(tmp_path, [record(n, NOON + n, f"+3361234{n:04d}") for n in range(20)])
    written = parse_head((tmp_path / HEAD_NAME).read_bytes())
    assert written is not None
    fd = held(tmp_path)
    try:
        head = read_head(tmp_path)  # would block here if it took the lock
    finally:
        os.close(fd)
    assert head is not None
    assert (head.name, head.size, head.hash) == (written.name, written.size, written.hash)


def test_a_torn_head_waits_for_the_lock(tmp_path: Path) -> None:
    write(tmp_path, [record(n, NOON + n, f"+3361234{n:04d}") for n in range(20)])
    path = tmp_path / "audit-2026-11-30.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    true = parse_head((tmp_path / HEAD_NAME).read_bytes())
    assert true is not None
    # A read half old, half new: the size of the batch before, the hash of the last line.
    earlier = sum(len(line) for line in lines[:-3])
    (tmp_path / HEAD_NAME).write_bytes(Head(true.name, earlier, true.hash).encode())
    fd = held(tmp_path)
    found: list[Head | None] = []
    reader = threading.Thread(target=lambda: found.append(read_head(tmp_path)))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and not found  # waiting for the writer's batch to end
    (tmp_path / HEAD_NAME).write_bytes(true.encode())  # the writer finishes its pwrite
    os.close(fd)
    reader.join(5)
    assert found and found[0] is not None and found[0].size == true.size
