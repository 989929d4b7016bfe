"""Live reload (SIGHUP, `dialguard reload`): the configuration and the policy read again,
and what changed put in force for the calls that start from then on.

A file that does not load is refused with the message `serve` would have given at
start-up, and the running configuration stays. What a reload cannot change under a
running service (where it listens, the API's listener included, its Redis, its journal,
its node name, ARI, metrics)
keeps its running value until a restart, and the reload says so. Each reload, applied or
refused, is an audit record of kind `reload`, one per worker process: who, the policy and
configuration hashes before and after, each field that changed. The record is written
before the change is put in force: a reload that cannot be recorded is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from dialguard.audit import AuditUnavailable, Journal
from dialguard.config import Config, ConfigError, load_config
from dialguard.model import Campaign
from dialguard.policy import retroactive
from dialguard.runfiles import ReloadResult, read_request, write_result
from dialguard.service import new_id

__all__ = ["Changes", "Reloader", "compare", "in_force"]

log = structlog.get_logger("dialguard.reload")


@dataclass(frozen=True, slots=True)
class Changes:
    applied: tuple[str, ...]  # what the reload puts in force, field by field
    restart_needed: tuple[str, ...]  # changed in the file, kept as running until a restart


def compare(old: Config, new: Config, today: date | None = None) -> Changes:
    """What differs between the running configuration and the one just read. With
    `today`, a policy version that changes days already begun is said too (allowed: it
    decides only the calls from now on)."""
    applied: list[str] = []
    if old.policy.hash != new.policy.hash:
        applied.append(
            f"policy {old.policy.name} {old.policy.hash} -> {new.policy.name} {new.policy.hash}"
        )
        if today is not None:
            applied.extend(retroactive(old.policy, new.policy, today))
    for name in sorted(old.campaigns.keys() | new.campaigns.keys()):
        before, after = old.campaigns.get(name), new.campaigns.get(name)
        if before is None:
            assert after is not None
            applied.append(f"campaign {name} added: {_describe(after)}")
        elif after is None:
            applied.append(f"campaign {name} removed")
        elif before != after:
            applied.append(f"campaign {name}: {_differences(before, after)}")
    for key in ("deadline_ms", "session_timeout_ms", "campaign_from_accountcode"):
        was, now = getattr(old.server, key), getattr(new.server, key)
        if was != now:
            applied.append(f"server.{key} {was} -> {now}")
    if old.server.allow != new.server.allow:
        shown = ", ".join(map(str, new.server.allow))
        applied.append(f"server.allow -> {shown}")
    if old.server.max_connections != new.server.max_connections:
        was_cap, now_cap = old.server.max_connections, new.server.max_connections
        applied.append(f"server.max_connections {was_cap} -> {now_cap}")
    if old.audit_retention_days != new.audit_retention_days:
        was_days, now_days = old.audit_retention_days, new.audit_retention_days
        applied.append(f"audit.retention_days {was_days} -> {now_days}")
    if old.api is not None and new.api is not None:
        for key in ("tokens_file", "max_body_bytes", "idempotency_hours"):
            was, now = getattr(old.api, key), getattr(new.api, key)
            if was != now:
                applied.append(f"api.{key} {was} -> {now}")
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
    if old.central != new.central:
        restart.append("central")
    if (old.api is None) != (new.api is None):
        restart.append("api")
    elif old.api is not None and new.api is not None:
        restart.extend(f"api.{key}" for key in ("host", "port") if _differs(old.api, new.api, key))
    if old.vicidial != new.vicidial:
        restart.append("vicidial")
    return Changes(tuple(applied), tuple(restart))


def _differs(old: object, new: object, key: str) -> bool:
    return bool(getattr(old, key) != getattr(new, key))


def _describe(campaign: Campaign) -> str:
    return ", ".join(
        f"{f.name} {_plain(getattr(campaign, f.name))}"
        for f in fields(campaign)
        if f.name != "name"
    )


def _differences(before: Campaign, after: Campaign) -> str:
    return ", ".join(
        f"{f.name} {_plain(getattr(before, f.name))} -> {_plain(getattr(after, f.name))}"
        for f in fields(before)
        if getattr(before, f.name) != getattr(after, f.name)
    )


def _plain(value: object) -> str:
    text = getattr(value, "value", value)
    return repr(text) if text == "" else str(text)


def in_force(old: Config, new: Config) -> Config:
    """`new`, but with what only a restart can change kept as it runs."""
    server = replace(
        new.server, host=old.server.host, port=old.server.port, workers=old.server.workers
    )
    # The API's listener stays as started; its tokens, limits and replies follow the file.
    api = old.api
    if old.api is not None and new.api is not None:
        api = replace(new.api, host=old.api.host, port=old.api.port)
    return replace(
        new,
        node=old.node,
        redis=old.redis,
        server=server,
        audit_dir=old.audit_dir,
        ari=old.ari,
        metrics=old.metrics,
        central=old.central,
        api=api,
        vicidial=old.vicidial,
    )


class Reloader:
    """One process's reloads. `apply` is told the new configuration to put in force (the
    service, the listeners). Each worker (`worker`: its index) answers `dialguard reload`
    and writes its own record: each says what it runs."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        apply: Callable[[Config], None],
        *,
        worker: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self._journal = journal
        self._apply = apply
        self._worker = worker
        self._env = env
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadResult:
        async with self._lock:  # two SIGHUPs in a row: one after the other
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        old = self.config
        request = read_request(old.audit_dir)
        request_id = request.id if request else ""
        operator = (request.operator if request else "") or "SIGHUP"
        try:
            # The same reading as at start-up: the same one-line messages.
            new = await asyncio.to_thread(load_config, old.path, self._env or dict(os.environ))
        except Exception as exc:  # a ConfigError, or anything else: refused in one line
            message = str(exc) if isinstance(exc, ConfigError) else f"{old.path}: {exc}"
            message = " ".join(message.split())
            log.error("reload_refused", error=message, operator=operator)
            refused = ReloadResult(request_id, False, message, old.policy.hash, old.hash)
            record = self._record(old, old, Changes((), ()), operator, refused)
            record["config_to"] = _file_hash(old)
            try:
                await self._journal.append(record)
            except AuditUnavailable as journal_error:
                log.error("reload_unrecorded", error=str(journal_error))
            return self._answer(refused)
        zone = ZoneInfo(new.policy.default_timezone)
        changes = compare(old, new, datetime.now(UTC).astimezone(zone).date())
        running = in_force(old, new)
        said = "; ".join(changes.applied) or "nothing changed"
        if changes.restart_needed:
            said += f"; kept until a restart: {', '.join(changes.restart_needed)}"
        result = ReloadResult(request_id, True, said, running.policy.hash, running.hash)
        try:
            # Recorded before it is in force: no decision under it comes before its record.
            await self._journal.append(self._record(old, running, changes, operator, result))
        except AuditUnavailable as exc:
            message = f"cannot write the reload's audit record, so nothing changed: {exc}"
            log.error("reload_refused", error=message, operator=operator)
            return self._answer(ReloadResult(request_id, False, message, old.policy.hash, old.hash))
        self._apply(running)
        self.config = running
        log.info(
            "reloaded",
            operator=operator,
            policy=running.policy.name,
            policy_hash=running.policy.hash,
            changed=list(changes.applied),
            restart_needed=list(changes.restart_needed),
        )
        return self._answer(result)

    def _answer(self, result: ReloadResult) -> ReloadResult:
        try:
            write_result(self.config.audit_dir, self._worker, result)
        except OSError as exc:
            log.error("reload_result_unwritable", error=str(exc))
        return result

    def _record(
        self, old: Config, new: Config, changes: Changes, operator: str, result: ReloadResult
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "id": new_id(now),
            "ts": int(now.timestamp() * 1000),
            "node": old.node,
            "kind": "reload",
            "applied": result.applied,
            "operator": operator,
            "worker": self._worker,
            "pid": os.getpid(),
            "policy_from": {"name": old.policy.name, "hash": old.policy.hash},
            "policy_to": {"name": new.policy.name, "hash": new.policy.hash},
            "config_from": old.hash,
            "config_to": new.hash,
            "changed": list(changes.applied),
            "restart_needed": list(changes.restart_needed),
            "why": "" if result.applied else result.message,
        }


def _file_hash(config: Config) -> str:
    """The hash of the file a refused reload read (as Config.hash is made), "" if none."""
    try:
        return hashlib.sha256(config.path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""
