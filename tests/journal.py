"""Reading what the code under test wrote to an audit journal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def audit_records(directory: Path) -> list[dict[str, Any]]:
    """Every record of the journal in `directory`, oldest day first; none if it was never
    written. Split on bytes: str.splitlines would also break a record at U+2028 and the
    like, which JSON leaves unescaped."""
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("audit-*.jsonl")):
        records += [json.loads(line) for line in path.read_bytes().splitlines()]
    return records
