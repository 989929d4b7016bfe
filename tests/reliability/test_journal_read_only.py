"""The audit journal's directory turns read-only under load, then writable again.

A chmod would not do: the journal's files are open already, and root ignores modes. The
immutable attribute does (`chattr +i`, ext4, xfs, btrfs): on the directory and on every
file in it, writes to the open files fail (EPERM) and nothing new can be created, for
root too, as on a file system remounted read-only. (A remount itself is refused while
the journal is open for writing.) Skipped, saying so, where chattr cannot set it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.reliability.served import dialguard_serve, row, steady

NORMAL = "ALLOW NON_COMMERCIAL"
RATE = 100.0


def chattr(flag: str, directory: Path) -> subprocess.CompletedProcess[str]:
    paths = [str(directory), *(str(p) for p in sorted(directory.iterdir()))]
    return subprocess.run(["chattr", flag, *paths], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    done = chattr("+i", directory)
    try:
        if done.returncode != 0:
            pytest.skip(f"chattr +i refused here: {done.stderr.strip()}")
        yield
    finally:
        chattr("-i", directory)


async def test_the_journal_directory_turns_read_only(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    async with dialguard_serve(tmp_path, clean_redis.url) as served:
        before = served.sample()
        load = asyncio.create_task(steady(served.port, RATE, 3.0))
        await asyncio.sleep(1.0)
        with immutable(served.audit):
            read_only_at = time.monotonic()
            await asyncio.sleep(1.0)
        writable_at = time.monotonic()
        calls = await load
        after = served.sample()
        during = [a for t, a in calls.timeline if read_only_at + 0.05 < t < writable_at - 0.05]
        # No durable record, no answer: the dialplan sees no DIALGUARD_RESULT, fails closed.
        assert during and set(during) == {""}, during
        assert set(calls.answers) == {NORMAL}, calls.answers
        recovered = calls.normal_again(writable_at)
        assert recovered < 0.5, recovered
        ids = {record["id"] for record in served.records()}
        lost = sum(1 for decision_id in calls.ids if decision_id not in ids)
        assert lost == 0
        errors = served.events("audit_unavailable")
        assert errors and all("Operation not permitted" in e["error"] for e in errors), errors[:3]
        # ~100 failed calls, one line: the rest are counted for the next (one per 10 s).
        assert len(errors) == 1, errors
        assert served.stop() == 0
    row(
        "audit journal's directory read-only (chattr +i) for 1 s",
        f"{RATE:.0f} calls/s",
        f"{calls.got()}: no answer while read-only (the dialplan fails closed);"
        f" {len(errors)} `audit_unavailable` log lines",
        lost,
        f"{recovered:.2f} s after it was writable again",
        f"RSS {before.rss_kib // 1024} → {after.rss_kib // 1024} MiB,"
        f" fds {before.fds} → {after.fds}",
    )
