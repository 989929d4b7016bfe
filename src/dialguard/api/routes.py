"""The endpoints of the HTTP API: each reads its request (dialguard.api.schema), goes through
the service as every adapter does (Service.decide, the live changes: journal first, then
Redis), and says what happened as a `Reply`. dialguard.api.app does the rest: tokens and
scopes, body limits, idempotency, errors as JSON.

The table ROUTES is the API: openapi.json describes the same endpoints (a test holds
them together).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from dialguard import history
from dialguard.api.errors import ApiError
from dialguard.api.idempotency import DECISION_REPLAY_S, Reply
from dialguard.api.schema import (
    ConsentBody,
    ContractBody,
    ContractEndBody,
    DecisionBody,
    OutcomeBody,
    WithdrawalBody,
    explain_flag,
    reason_of,
)
from dialguard.api.tokens import Token
from dialguard.audit.reader import Torn
from dialguard.config import ApiSettings
from dialguard.model import CallRequest
from dialguard.numbers import InvalidNumber, normalise
from dialguard.service import OutcomeStatus, Service, Verdict
from dialguard.store import StoreUnavailable

__all__ = ["OPENAPI", "ROUTES", "Call", "Route"]

OPENAPI = Path(__file__).with_name("openapi.json")
ADAPTER = "http"  # the audit records' `adapter` of what comes through this API


@dataclass(frozen=True, slots=True)
class Call:
    """One request, authenticated and read."""

    service: Service
    token: Token
    data: Mapping[str, Any]  # the JSON body ({} for a GET)
    query: Mapping[str, str]
    match: Mapping[str, str]  # the path's parameters
    started: float  # the event loop's time when it arrived: the deadline counts from it

    @property
    def now(self) -> datetime:
        return self.service.clock()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.service.config.policy.default_timezone)


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    scope: str | None  # None: any valid token
    handler: Handler
    body: str = "json"  # "json": a JSON object; "optional": none is {}; "none": not read
    replay: str = "change"  # how long an Idempotency-Key's answer is kept: change, decision

    def replay_s(self, settings: ApiSettings) -> int:
        if self.replay == "decision":
            return min(DECISION_REPLAY_S, settings.idempotency_hours * 3600)
        return settings.idempotency_hours * 3600


# --- decisions ----------------------------------------------------------------------------


async def decide(call: Call) -> Reply:
    """The decision FastAGI would give (same rules, deadline, fail modes, audit record)."""
    body = DecisionBody.parse(call.data)
    explain = explain_flag(call.query)
    request = CallRequest(
        body.number, body.campaign, body.channel, body.call_id, body.caller_id, ADAPTER
    )
    service = call.service
    deadline_s = service.config.server.deadline_ms / 1000
    remaining = deadline_s - (asyncio.get_running_loop().time() - call.started)
    # Floored at 1 ms, as FastAGI's: an answer already late still gets the store's chance.
    verdict = await service.decide(request, record=body.record, deadline_s=max(remaining, 0.001))
    return Reply(200, _decision(verdict, body.record, explain))


def _decision(verdict: Verdict, recorded: bool, explain: bool) -> dict[str, Any]:
    decision = verdict.decision
    result, reason = verdict.answer  # shadow mode: ALLOW, SHADOW_<reason>
    answer: dict[str, Any] = {
        "result": result.value,
        "reason": reason,
        "id": verdict.id,
        "number": decision.number.e164 if decision.number else None,
    }
    if explain:
        answer.update(
            {
                "decision": {"result": decision.result.value, "reason": decision.reason.value},
                "mode": "shadow" if verdict.shadow else "enforce",
                "recorded": recorded,
                "local_time": decision.local_time,
                "attempts_30d": decision.attempts_30d,
                "degraded": decision.degraded,
                "rules": [rule.as_json() for rule in decision.rules],
                "evidence": dict(decision.evidence),
                "policy": decision.policy.as_json(),
            }
        )
    return answer


# --- changes ------------------------------------------------------------------------------


def _changed(change_id: str, number: str, taken: bool, **more: Any) -> Reply:
    """RECORDED (200): journalled and in Redis; PENDING (202): journalled, Redis did not
    take it yet: it holds on this node at once and everywhere once Redis answers."""
    if taken:
        return Reply(200, {"status": "RECORDED", "id": change_id, "number": number, **more})
    pending = "Redis did not take it; kept in the audit journal, applied once Redis answers"
    return Reply(
        202,
        {"status": "PENDING", "id": change_id, "number": number, **more, "detail": pending},
    )


async def outcome(call: Call) -> Reply:
    body = OutcomeBody.parse(call.data, call.zone, call.now)
    service = call.service
    if service.campaign(body.campaign) is None:
        known = ", ".join(sorted(service.config.campaigns))
        raise ApiError("unknown_campaign", f"unknown campaign {body.campaign!r} (known: {known})")
    request = CallRequest(body.number, body.campaign, body.channel, body.call_id, adapter=ADAPTER)
    result = await service.record_outcome(
        request, body.outcome, now=body.at, operator=call.token.name
    )
    if result.status is OutcomeStatus.INVALID or result.number is None:
        raise ApiError("invalid_number", result.detail)
    return _changed(
        result.id,
        result.number.e164,
        result.status is OutcomeStatus.RECORDED,
        outcome=body.outcome,
        principal=result.principal,
    )


async def dnc_add(call: Call) -> Reply:
    reason = reason_of(call.data, "added through the API")
    number, change_id, taken = await call.service.dnc_add(
        call.match["number"], reason, operator=call.token.name, adapter=ADAPTER
    )
    return _changed(change_id, number.e164, taken, listed=True)


async def dnc_remove(call: Call) -> Reply:
    reason = reason_of(call.query, None)
    number, change_id, removed = await call.service.dnc_remove(
        call.match["number"], reason, operator=call.token.name, adapter=ADAPTER
    )
    if removed is None:
        return _changed(change_id, number.e164, False)
    # `was_listed`: whether it was on the list (a removal of a number not on it is kept
    # all the same: someone asked, and the journal says so).
    return _changed(change_id, number.e164, True, was_listed=removed)


async def withdraw_consent(call: Call) -> Reply:
    body = WithdrawalBody.parse(call.data, call.zone, call.now)
    number, change_id, taken = await call.service.withdraw_consent(
        body.number, body.principal, body.at, operator=call.token.name, adapter=ADAPTER
    )
    return _changed(change_id, number.e164, taken, principal=body.principal)


async def add_consent(call: Call) -> Reply:
    """The consumer's consent, in force for the next call (the web form's lead, called
    within minutes: not tonight's import)."""
    body = ConsentBody.parse(call.data, call.zone, call.now)
    number, change_id, taken = await call.service.add_consent(
        body.number,
        body.principal,
        body.proof_ref,
        given_at=body.given_at,
        expires_at=body.expires_at,
        source=body.source,
        operator=call.token.name,
        adapter=ADAPTER,
    )
    return _changed(change_id, number.e164, taken, principal=body.principal)


async def add_contract(call: Call) -> Reply:
    body = ContractBody.parse(call.data)
    number, change_id, taken = await call.service.add_contract(
        body.number,
        body.principal,
        body.id,
        body.sector,
        start=body.start,
        end=body.end,
        operator=call.token.name,
        adapter=ADAPTER,
    )
    return _changed(change_id, number.e164, taken, principal=body.principal, contract=body.id)


async def end_contract(call: Call) -> Reply:
    body = ContractEndBody.parse(call.data, call.zone, call.now)
    number, change_id, taken = await call.service.end_contract(
        body.number,
        body.principal,
        body.id,
        ended_at=body.at,
        operator=call.token.name,
        adapter=ADAPTER,
    )
    return _changed(change_id, number.e164, taken, principal=body.principal, contract=body.id)


# --- reads --------------------------------------------------------------------------------


async def number_history(call: Call) -> Reply:
    """Every record of the journal about the number, then what Redis holds for it now."""
    try:
        number = normalise(call.match["number"])
    except InvalidNumber as exc:
        raise ApiError("invalid_number", str(exc)) from None
    service = call.service
    torn: list[Torn] = []
    # The journal's files are read off the event loop: decisions go on meanwhile.
    events = await asyncio.to_thread(history.events, service.config.audit_dir, number, torn)
    answer: dict[str, Any] = {"number": number.e164, "events": events}
    try:
        answer["in_force"] = await history.in_force(service.store, service.config, number)
    except StoreUnavailable as exc:
        answer["in_force"] = None
        answer["in_force_error"] = str(exc)
    if torn:
        answer["torn"] = [str(t) for t in torn]
    return Reply(200, answer)


@functools.cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(OPENAPI.read_bytes())
    return document


async def openapi(call: Call) -> Reply:
    """This API's OpenAPI 3.1 document (the file beside this module)."""
    return Reply(200, _document())


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/decisions", "decide", decide, replay="decision"),
    Route("POST", "/v1/outcomes", "write-lists", outcome),
    Route("POST", "/v1/dnc/{number}", "write-lists", dnc_add, body="optional"),
    Route("DELETE", "/v1/dnc/{number}", "write-lists", dnc_remove, body="none"),
    Route("POST", "/v1/consents", "write-lists", add_consent),
    Route("POST", "/v1/consents/withdrawals", "write-lists", withdraw_consent),
    Route("POST", "/v1/contracts", "write-lists", add_contract),
    Route("POST", "/v1/contracts/end", "write-lists", end_contract),
    Route("GET", "/v1/numbers/{number}/history", "read-audit", number_history, body="none"),
    Route("GET", "/v1/openapi.json", None, openapi, body="none"),
)
