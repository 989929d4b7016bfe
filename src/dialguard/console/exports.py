"""Exports made in the console: the same file and manifest as `dialguard audit export`,
for a date range and filters, read from the central store; each one an audit record.

The file is written first (mode 0600, in the exports directory), then the record of it
(kind `export`: who, when, from which address, the filters, the count, the file's
SHA-256) is made durable in this node's journal, and only then is the file offered for
download. A journal that cannot take the record means no export: the file is removed.
Files are kept `exports_keep_hours`, then removed: an export holds personal data.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from dialguard.audit.export import MASK_KEY_ENV, MIN_KEY_BYTES, Tally, created_now, write_export
from dialguard.central.store import CentralStore, Filters
from dialguard.console.views import BadInput

__all__ = ["Export", "download", "listed", "mask_key", "prune", "record", "write"]

_NAME = re.compile(r"^export-([0-9a-z]{1,64})\.(jsonl|csv)$")
Export = dict[str, Any]  # a manifest as written


def mask_key(key_file: Path | None, env: dict[str, str] | os._Environ[str]) -> bytes | None:
    """The pseudonymisation key (the file, else DIALGUARD_AUDIT_MASK_KEY); None if there is
    none long enough (masked exports are then not offered)."""
    if key_file is not None:
        try:
            key = key_file.read_bytes().strip()
        except OSError:
            return None
    else:
        key = env.get(MASK_KEY_ENV, "").encode()
    return key if len(key) >= MIN_KEY_BYTES else None


def write(
    store: CentralStore,
    directory: Path,
    export_id: str,
    filters: Filters,
    fmt: str,
    key: bytes | None,
    about: dict[str, Any],
) -> Export:
    """The export's file and manifest (in a reader thread); the manifest."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = directory / f"export-{export_id}.{fmt}"
    found = ((row.line, _record(row.line)) for row in store.export(filters))
    try:
        tally, sha256 = write_export(out, fmt, found, key)
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()
        raise
    manifest = _manifest(out, fmt, tally, sha256, store.shown, filters, key is not None, about)
    path = out.with_name(out.name + ".manifest.json")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def _record(line: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _manifest(
    out: Path,
    fmt: str,
    tally: Tally,
    sha256: str,
    store: str,
    filters: Filters,
    masked: bool,
    about: dict[str, Any],
) -> Export:
    """`audit export`'s manifest, the store in place of the journal, and who asked what."""
    chosen = {k: v for k, v in asdict(filters).items() if v not in (None, False)}
    chosen.pop("since_ms", None), chosen.pop("until_ms", None)
    return {
        "file": out.name,
        "format": fmt,
        "sha256": sha256,
        **tally.ends,
        "since": about["since"],
        "until": about["until"],
        "timezone": about["timezone"],
        "masked": masked,
        "store": store,
        "filters": chosen,
        "exported_by": about["operator"],
        "record": about["id"],
        "created": created_now(),
    }


def record(manifest: Export, node: str, ts_ms: int, address: str) -> dict[str, Any]:
    """The audit record of an export: who took what, when, from where."""
    return {
        "id": manifest["record"],
        "ts": ts_ms,
        "node": node,
        "kind": "export",
        "operator": manifest["exported_by"],
        "via": "console",
        "address": address,
        "format": manifest["format"],
        "masked": manifest["masked"],
        "since": manifest["since"],
        "until": manifest["until"],
        "timezone": manifest["timezone"],
        "filters": manifest["filters"],
        "records": manifest["records"],
        "sha256": manifest["sha256"],
        "file": manifest["file"],
        "store": manifest["store"],
    }


def remove(directory: Path, file_name: str) -> None:
    for name in (file_name, file_name + ".manifest.json"):
        with contextlib.suppress(OSError):
            (directory / name).unlink()


def prune(directory: Path, keep_hours: int, now: float | None = None) -> None:
    """Remove the exports older than `keep_hours` (their file and manifest)."""
    horizon = (now if now is not None else time.time()) - keep_hours * 3600
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for path in entries:
        if _NAME.match(path.name.removesuffix(".manifest.json")):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < horizon:
                    path.unlink()


def listed(directory: Path) -> list[Export]:
    """The exports kept, newest first (from their manifests)."""
    found: list[Export] = []
    try:
        paths = sorted(directory.glob("export-*.manifest.json"), reverse=True)
    except OSError:
        return found
    for path in paths:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            manifest = orjson.loads(path.read_bytes())
            if isinstance(manifest, dict) and _NAME.match(str(manifest.get("file", ""))):
                found.append(manifest)
    return found


def download(directory: Path, file_name: str, manifest: bool) -> Path:
    """The path of an export's file (or its manifest); BadInput for any other name."""
    if not _NAME.match(file_name):
        raise BadInput("file", "no such export")
    path = directory / (file_name + (".manifest.json" if manifest else ""))
    if not path.is_file():
        raise BadInput("file", "no such export (removed after its time?)")
    return path


def when(manifest: Export) -> str:
    created = str(manifest.get("created", ""))
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(created).astimezone(UTC).isoformat(timespec="seconds")
    return created
