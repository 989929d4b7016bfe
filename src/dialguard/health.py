"""Readiness: can this process take decisions that hold? Each check answers within
CHECK_TIMEOUT_S with one line saying what is wrong; `/readyz` (dialguard.metrics) serves
them.

- redis: a PING through the store's own connection pool;
- journal: the directory can be written and the last append did not fail, or a probe
  file written and flushed there since shows it would not now (no record is written to
  find out);
- pending: no journalled change has waited for Redis longer than `max_pending_s` (an
  opt-out Redis has not taken holds on this node alone);
- policy: the policy in force (read from the service at each probe: a reload shows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from dialguard.service import Service
from dialguard.store import StoreUnavailable

__all__ = ["CHECK_TIMEOUT_S", "readiness"]

# Past this, a check fails: a probe must answer well within a monitor's own timeout.
CHECK_TIMEOUT_S = 1.0

Check = dict[str, Any]  # {"ok": bool, "error": one line when not ok, then facts}


async def readiness(
    service: Service, max_pending_s: float, timeout_s: float = CHECK_TIMEOUT_S
) -> tuple[bool, dict[str, Check]]:
    """(ready, each check by name), the checks run concurrently."""
    names = ("redis", "journal", "pending", "policy")
    results = await asyncio.gather(
        _bounded(_redis(service), timeout_s),
        _bounded(_journal(service), timeout_s),
        _bounded(_pending(service, max_pending_s), timeout_s),
        _bounded(_policy(service), timeout_s),
    )
    checks = dict(zip(names, results, strict=True))
    return all(check["ok"] for check in checks.values()), checks


async def _bounded(check: Awaitable[Check], timeout_s: float) -> Check:
    try:
        async with asyncio.timeout(timeout_s):
            return await check
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout_s * 1000:.0f} ms"}


async def _redis(service: Service) -> Check:
    started = time.perf_counter()
    try:
        await service.store.ping()
    except StoreUnavailable as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def _journal(service: Service) -> Check:
    journal = service.journal
    if journal is None:
        return {"ok": False, "error": "no audit journal"}
    # A few system calls, off the loop all the same: a hung disk must not hang the probe.
    problem = await asyncio.to_thread(journal.problem)
    if problem is not None:
        return {"ok": False, "error": problem, "dir": str(journal.directory)}
    return {"ok": True, "dir": str(journal.directory)}


async def _pending(service: Service, max_pending_s: float) -> Check:
    waiting = len(service.pending)
    age = service.pending.oldest_age_s(service.clock())
    check: Check = {"ok": age <= max_pending_s, "changes": waiting, "oldest_age_s": round(age, 1)}
    if not check["ok"]:
        check["error"] = (
            f"{waiting} journalled change(s) not taken by Redis, the oldest {age:.0f} s ago"
            f" (more than {max_pending_s:g} s)"
        )
    return check


async def _policy(service: Service) -> Check:
    policy = getattr(service.config, "policy", None)
    if policy is None:
        return {"ok": False, "error": "no policy loaded"}
    return {"ok": True, "name": policy.name, "hash": policy.hash}
