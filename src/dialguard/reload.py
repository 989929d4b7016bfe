"""Live reload (SIGHUP, `dialguard reload`): the configuration and the policy read again,
and what changed put in force for the calls that start from then on.

A file that does not load is refused with the message `serve` would have given at
start-up, and the running configuration stays. What a reload cannot change under a
running service (where it listens, its Redis, its journal, its node name, ARI, metrics)
keeps its running value until a restart, and the reload says so. Each reload, applied or
refused, is an audit record of kind `reload`: who, the policy and configuration hashes
before and after, what changed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from dialguard.audit import AuditUnavailable, Journal
from dialguard.config import Config, ConfigError, load_config
from dialguard.runfiles import ReloadResult, take_request, write_result
from dialguard.service import new_id

__all__ = ["Changes", "Reloader", "compare", "in_force"]

log = structlog.get_logger("dialguard.reload")


@dataclass(frozen=True, slots=True)
class Changes:
    applied: tuple[str, ...]  # what the reload puts in force
    restart_needed: tuple[str, ...]  # changed in the file, kept as running until a restart


def compare(old: Config, new: Config) -> Changes:
    """What differs between the running configuration and the one just read."""
    applied: list[str] = []
    if old.policy.hash != new.policy.hash:
        applied.append(f"policy {old.policy.name} {old.policy.hash} -> {new.policy.hash}")
    for name in sorted(old.campaigns.keys() | new.campaigns.keys()):
        before, after = old.campaigns.get(name), new.campaigns.get(name)
        if before != after:
            what = "added" if before is None else "removed" if after is None else "changed"
            applied.append(f"campaign {name} {what}")
    for key in ("deadline_ms", "session_timeout_ms", "campaign_from_accountcode"):
        if getattr(old.server, key) != getattr(new.server, key):
            applied.append(f"server.{key}")
    if old.audit_retention_days != new.audit_retention_days:
        applied.append("audit.retention_days")
    restart: list[str] = []
    for key in ("host", "port", "workers"):
        if getattr(old.server, key) != getattr(new.server, key):
            restart.append(f"server.{key}")
    if old.redis != new.redis:
        restart.append("redis")
    if old.audit_dir.resolve() != new.audit_dir.resolve():
        restart.append("audit.dir")
    if old.node != new.node:
        restart.append("node")
    if old.ari != new.ari:
        restart.append("ari")
    if old.metrics != new.metrics:
        restart.append("metrics")
    return Changes(tuple(applied), tuple(restart))


def in_force(old: Config, new: Config) -> Config:
    """`new`, but with what only a restart can change kept as it runs."""
    server = replace(
        new.server, host=old.server.host, port=old.server.port, workers=old.server.workers
    )
    return replace(
        new,
        node=old.node,
        redis=old.redis,
        server=server,
        audit_dir=old.audit_dir,
        ari=old.ari,
        metrics=old.metrics,
    )


class Reloader:
    """One process's reloads. `apply` is told the new configuration to put in force (the
    service, the listeners); `speaks` for the process that answers `dialguard reload`
    and writes the audit record (one per reload, however many workers)."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        apply: Callable[[Config], None],
        *,
        speaks: bool,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self._journal = journal
        self._apply = apply
        self._speaks = speaks
        self._env = env
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadResult:
        async with self._lock:  # two SIGHUPs in a row: one after the other
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        old = self.config
        directory = old.audit_dir
        request = take_request(directory) if self._speaks else None
        operator = (request.operator if request else "") or "SIGHUP"
        try:
            # The same reading as at start-up: the same one-line messages.
            new = await asyncio.to_thread(load_config, old.path, self._env or dict(os.environ))
        except ConfigError as exc:
            result = ReloadResult(request.id if request else "", False, str(exc))
            log.error("reload_refused", error=str(exc), operator=operator)
            await self._record(old, old, Changes((), ()), operator, result)
            return self._answer(result)
        changes = compare(old, new)
        running = in_force(old, new)
        self._apply(running)
        self.config = running
        said = "; ".join(changes.applied) or "nothing changed"
        if changes.restart_needed:
            said += f"; kept until a restart: {', '.join(changes.restart_needed)}"
        result = ReloadResult(request.id if request else "", True, said)
        log.info(
            "reloaded",
            operator=operator,
            policy=running.policy.name,
            policy_hash=running.policy.hash,
            changed=list(changes.applied),
            restart_needed=list(changes.restart_needed),
        )
        await self._record(old, running, changes, operator, result)
        return self._answer(result)

    def _answer(self, result: ReloadResult) -> ReloadResult:
        if self._speaks:
            try:
                write_result(self.config.audit_dir, result)
            except OSError as exc:
                log.error("reload_result_unwritable", error=str(exc))
        return result

    async def _record(
        self, old: Config, new: Config, changes: Changes, operator: str, result: ReloadResult
    ) -> None:
        if not self._speaks:
            return
        now = datetime.now(UTC)
        record: dict[str, Any] = {
            "id": new_id(now),
            "ts": int(now.timestamp() * 1000),
            "node": old.node,
            "kind": "reload",
            "applied": result.applied,
            "operator": operator,
            "policy_from": {"name": old.policy.name, "hash": old.policy.hash},
            "policy_to": {"name": new.policy.name, "hash": new.policy.hash},
            "config_from": old.hash,
            "config_to": new.hash,
            "changed": list(changes.applied),
            "restart_needed": list(changes.restart_needed),
            "why": "" if result.applied else result.message,
        }
        try:
            await self._journal.append(record)
        except AuditUnavailable as exc:
            # The decisions name their policy hash all the same: the reload stands.
            log.error("reload_unrecorded", error=str(exc))
