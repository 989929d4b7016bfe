"""The audit journal: one JSON record per decision or recorded outcome.

This is the interface the service writes through. For now a record is one JSON line
appended to a file per UTC day and fsync'd before `append` returns, so a decision that
reached Asterisk has a durable record. The tamper-evident, group-committed journal and the
supervisor's tools (issue "Audit trail") drop in behind the same `append`.
"""

from __future__ import annotations

import json
import os
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

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        day = datetime.fromtimestamp(record["ts"] / 1000, UTC).strftime("%Y-%m-%d")
        path = self.directory / f"audit-{day}.jsonl"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
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
