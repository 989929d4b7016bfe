"""Redis rebuilt from the journal: the system of record is the journal, Redis a view of it.

The journal holds every import (with the name of its kept file) and every live change, in
the order they took effect. A rebuild replays them in that order: for each list, the imports
from its last full replacement on (what came before was replaced whole), and every live
change (applying one twice changes nothing, so a Redis only partly lost is rebuilt as
well). Decision records and attempt counts are not replayed: the counts are the one thing
a rebuilt Redis forgets, so the 30-day cap restarts from zero (docs/audit.md).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from dialguard import importing
from dialguard.audit.files import START_NAME
from dialguard.audit.reader import lines, snapshot
from dialguard.changes import Change, change_in
from dialguard.store import Store

__all__ = ["Rebuilt", "journal_history", "rebuild"]

_IMPORT_MARKER = b'"kind":"import'  # import, and import-done once it is in force


@dataclass
class Rebuilt:
    imports: int = 0
    changes: int = 0
    skipped: list[str] = field(default_factory=list)  # imports replaced later, by file


def journal_history(directory: Path) -> list[dict[str, Any] | Change]:
    """Every import record (as a dict) and live change of the journal, in chain order."""
    found: list[dict[str, Any] | Change] = []
    for path, size in snapshot(directory).files:
        for _, line in lines(path, size, []):
            if _IMPORT_MARKER in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
                    if record.get("kind") in ("import", "import-done"):
                        found.append(record)
            elif (change := change_in(line)) is not None:
                found.append(change)
    return found


async def rebuild(
    store: Store,
    directory: Path,
    zone: ZoneInfo,
    notify: Callable[[str], None] = lambda _: None,
) -> Rebuilt:
    """Replay the journal into Redis. Raises importing.ImportFailed when a kept file is
    missing (nothing after it is replayed: the order matters)."""
    if (directory / START_NAME).exists():
        # `audit prune` removed the oldest records: the imports and live changes they held
        # (a do-not-call never expires) would be silently missing from the rebuild.
        raise importing.ImportFailed(
            f"{directory}: the journal was pruned (audit.start); it no longer holds every"
            " change, so it cannot rebuild Redis alone"
        )
    history = journal_history(directory)
    # Only imports that went in force: the record is written before the swap, `import-done`
    # after it (a swap that failed leaves a record and no list).
    done = {e.get("import") for e in history if isinstance(e, dict) and e["kind"] == "import-done"}
    history = [
        e
        for e in history
        if not isinstance(e, dict) or (e["kind"] == "import" and e.get("id") in done)
    ]
    last_replace: dict[str, int] = {}
    for position, event in enumerate(history):
        if isinstance(event, dict) and event.get("mode") == "replace":
            last_replace[str(event["list"])] = position
    rebuilt = Rebuilt()
    for position, event in enumerate(history):
        if isinstance(event, Change):
            await store.apply(event)
            rebuilt.changes += 1
            continue
        kind = str(event["list"])
        if position < last_replace.get(kind, -1):
            rebuilt.skipped.append(str(event.get("file")))
            continue
        await _reimport(store, directory, event, zone)
        rebuilt.imports += 1
        notify(f"{event.get('file')}: {kind} import of {event.get('mode')} replayed")
    return rebuilt


async def _reimport(store: Store, directory: Path, record: dict[str, Any], zone: ZoneInfo) -> None:
    try:
        await _reimport_checked(store, directory, record, zone)
    except (KeyError, ValueError, EOFError, gzip.BadGzipFile, OSError) as exc:
        what = f"import {record.get('id')} ({record.get('file')})"
        raise importing.ImportFailed(f"{what}: cannot be replayed: {exc}") from None


async def _reimport_checked(
    store: Store, directory: Path, record: dict[str, Any], zone: ZoneInfo
) -> None:
    kept = directory / "imports" / str(record["kept"])
    if not kept.is_file():
        raise importing.ImportFailed(f"{kept}: the kept copy of {record.get('file')} is missing")
    with tempfile.TemporaryDirectory(prefix="dialguard-rebuild-") as work:
        plain = Path(work) / Path(str(record.get("file") or "import.csv")).name
        digest = hashlib.sha256()
        with gzip.open(kept, "rb") as packed, plain.open("wb") as out:
            while chunk := packed.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != record["sha256"]:
            # The kept copy is not the file the journal says was loaded: edited, or damaged.
            raise importing.ImportFailed(
                f"{kept}: its content does not match the journal's SHA-256"
            )
        checked_on = record.get("checked_on")
        request = importing.Request(
            kind=str(record["list"]),
            path=plain,
            mode=str(record["mode"]),
            zone=zone,
            checked_on=date.fromisoformat(checked_on) if checked_on else None,
            ref=str(record.get("ref") or ""),
            dry_run=False,
            rejects_path=Path(work) / "rejects.csv",
            max_rejects=int(record.get("rejected") or 0),
            operator=str(record.get("operator") or ""),
        )
        await importing.run_import(request, store)
