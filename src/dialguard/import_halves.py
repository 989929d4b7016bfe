"""The second half of a big consent or contract file, read by another process while the
import reads the first (importing.scan): ten million lines are ~50 s of one core's
Python, and a build leaves the second core idle until the file is read.

The other process gathers its half as the import would (store/packed.py's Gathered), asks
the import for the id of each principal it meets that the import had not named, and
hands back its buckets, bad lines and counts. The import appends them after its own half:
every bucket's entries stay in file order (the later row of a pair is the one kept), and
bad lines keep their line numbers.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dialguard import import_files
from dialguard.import_files import Header, Rejected
from dialguard.import_reading import blocks
from dialguard.store.packed import Gathered

__all__ = ["Half", "HalfFailed", "Other"]


# Buckets a message of the other process's half carries (~20 MB at 10 M consents).
_PIECE = 20_000


class HalfFailed(RuntimeError):
    """The other process stopped without its half (one line)."""


@dataclass
class Half:
    """What the other process read (but its buckets, `Other.pieces`): bad lines
    numbered from 1 (its first line), lines read, rows gathered."""

    rejected: list[tuple[int, Rejected]]
    lines: int
    rows: int


def _gather(
    path: str,
    start: int,
    header: Header,
    zone: str,
    value_limit: int,
    ids: dict[str, int],
    conn: Connection,
) -> None:
    """The other process: the file from `start` to its end."""
    # An interrupt (^C reaches the whole process group) is the import's to handle: it
    # ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        gathered = Gathered(header.kind, value_limit)
        for principal, principal_id in ids.items():
            gathered.name(principal, principal_id)
        rejected: list[tuple[int, Rejected]] = []
        rows = lines = 0
        with open(path, "rb") as handle:
            handle.seek(start)
            found = import_files.blocks(header, blocks(handle), ZoneInfo(zone), gathered, 1)
            for chunk in found:
                if chunk.needs:
                    conn.send(("id", chunk.needs))
                    gathered.name(chunk.needs, conn.recv())
                rejected += chunk.rejected
                rows += len(chunk)
                lines = chunk.last_line
        conn.send(("done", Half(rejected, lines, rows)))
        if conn.recv() == "go":  # the import read its half: the buckets, in pieces
            for state in gathered.states(_PIECE):
                conn.send(("part", state))
            conn.send(("end", None))
    except import_files.BadImportFile as exc:
        conn.send(("bad", str(exc)))
    except Exception as exc:  # told to the import, which stops
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class Other:
    """The other process reading a file's second half, from the import's side."""

    def __init__(
        self,
        path: Path,
        start: int,
        header: Header,
        zone: str,
        value_limit: int,
        ids: dict[str, int],
    ) -> None:
        # A fresh interpreter: the import's threads (the file being kept) and event loop
        # do not survive a fork.
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(
            target=_gather,
            args=(str(path), start, header, zone, value_limit, ids, theirs),
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self._half: Half | None = None

    async def answer(self, principal_id: Callable[[str], Awaitable[int]]) -> bool:
        """Answer what the other process asked so far (a principal's id); True once it
        has handed back its half. Raises what stopped it."""
        while self._half is None and self._conn.poll():
            try:
                what, value = self._conn.recv()
            except EOFError:
                raise HalfFailed("the process reading the second half stopped") from None
            if what == "id":
                self._conn.send(await principal_id(value))
            elif what == "done":
                self._half = value
            elif what == "bad":
                raise import_files.BadImportFile(value)
            else:
                raise HalfFailed(f"reading the second half: {value}")
        if self._half is None and not self._process.is_alive() and not self._conn.poll():
            raise HalfFailed("the process reading the second half stopped")
        return self._half is not None

    @property
    def half(self) -> Half:
        assert self._half is not None
        return self._half

    def pieces(self) -> Iterator[Any]:
        """The half's buckets (Gathered.states), once the import read its own half."""
        self._conn.send("go")
        while True:
            try:
                what, value = self._conn.recv()
            except EOFError:
                raise HalfFailed("the process reading the second half stopped") from None
            if what == "end":
                return
            if what != "part":
                raise HalfFailed(f"reading the second half: {value}")
            yield value

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()
