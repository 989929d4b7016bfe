"""The audit journal: one JSON record per decision or recorded outcome.

This is the interface every writer goes through. A record is one JSON line appended to a
file per UTC day, and it is on disk (fsync'd) before `append` returns: a decision that
reached Asterisk has a durable record. Concurrent appends share one write and one fsync
(group commit), so durability costs one disk flush per batch, not per call. The
tamper-evident journal and the supervisor's tools (issue "Audit trail") drop in behind the
same `append`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dialguard.model import CallRequest, Campaign, Decision

__all__ = ["AuditUnavailable", "Journal", "decision_record"]


class AuditUnavailable(Exception):
    """The journal cannot be written; one line."""


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, record: dict[str, Any]) -> None:
        """Return once `record` is durable; raise AuditUnavailable if it cannot be."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_batches())
        await future

    async def _flush_batches(self) -> None:
        # While one batch is being written and fsync'd in a thread, the next one gathers.
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.write, [record for record, _ in batch])
            except AuditUnavailable as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records and fsync; blocking. The CLI calls it directly."""
        by_day: dict[str, list[str]] = {}
        for record in records:
            day = datetime.fromtimestamp(record["ts"] / 1000, UTC).strftime("%Y-%m-%d")
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
            by_day.setdefault(day, []).append(line + "\n")
        for day, lines in by_day.items():
            path = self.directory / f"audit-{day}.jsonl"
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    data = "".join(lines).encode("utf-8")
                    while data:
                        written = os.write(fd, data)
                        data = data[written:]
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise AuditUnavailable(
                    f"{path}: cannot write the audit record: {exc.strerror}"
                ) from None


def decision_record(
    *,
    decision_id: str,
    ts: datetime,
    node: str,
    request: CallRequest,
    campaign: Campaign | None,
    decision: Decision,
    latency_us: int,
) -> dict[str, Any]:
    """The audit record of one decision, with the fields DESIGN.md lists."""
    return {
        "id": decision_id,
        "ts": int(ts.timestamp() * 1000),
        "node": node,
        "kind": "decision",
        "result": decision.result.value,
        "reason": decision.reason.value,
        "rules": [r.as_json() for r in decision.rules],
        "number_raw": request.number_raw,
        "number": decision.number.e164 if decision.number else None,
        "campaign": request.campaign,
        "principal": campaign.principal if campaign else None,
        "purpose": campaign.purpose.value if campaign else None,
        "sector": campaign.sector.value if campaign else None,
        "local_time": decision.local_time,
        "attempts_30d": decision.attempts_30d,
        "evidence": dict(decision.evidence),
        "policy": {"name": decision.policy.name, "hash": decision.policy.hash},
        "channel": request.channel,
        "uniqueid": request.uniqueid,
        "callerid": request.callerid,
        "adapter": request.adapter,
        "latency_us": latency_us,
        "degraded": decision.degraded,
    }
