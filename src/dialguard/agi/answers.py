"""The decision and the outcome as channel variables: shared by FastAGI and classic AGI.

Adapters speak their protocol; these functions turn an `AgiRequest` into a `CallRequest`,
ask the service, and return the variables to set. Values only ever hold
`[A-Za-z0-9_+.-]` (DESIGN.md); adapters check that again right before writing.
"""

from __future__ import annotations

import re

import structlog

from dialguard.agi.protocol import AgiRequest
from dialguard.config import ServerSettings
from dialguard.model import CallRequest
from dialguard.numbers import InvalidNumber, normalise
from dialguard.service import OutcomeKind, Service
from dialguard.store import StoreUnavailable

__all__ = ["SAFE_VALUE", "Variables", "check_variables", "outcome_variables"]

log = structlog.get_logger("dialguard.agi")

Variables = dict[str, str]

# What we ever write as a variable value: a reason code, an id, an E.164 number.
SAFE_VALUE = re.compile(r"[A-Za-z0-9_+.-]{0,64}")


async def check_variables(
    service: Service,
    settings: ServerSettings,
    request: AgiRequest,
    deadline_s: float,
    adapter: str,
) -> Variables:
    """`check,NUMBER,CAMPAIGN`: decide, count, audit; the four DIALGUARD_* variables."""
    number = request.args[0] if request.args else ""
    campaign = request.args[1] if len(request.args) > 1 else ""
    if not campaign and settings.campaign_from_accountcode:
        campaign = request.accountcode
    call = CallRequest(
        number_raw=number,
        campaign=campaign,
        channel=request.channel,
        uniqueid=request.uniqueid,
        callerid=request.callerid,
        adapter=adapter,
    )
    verdict = await service.decide(call, record=True, deadline_s=max(deadline_s, 0.001))
    decision = verdict.decision
    return {
        "DIALGUARD_RESULT": decision.result.value,
        "DIALGUARD_REASON": decision.reason.value,
        "DIALGUARD_ID": verdict.id,
        "DIALGUARD_NUMBER": decision.number.e164 if decision.number else "",
    }


async def outcome_variables(
    service: Service, settings: ServerSettings, request: AgiRequest, adapter: str
) -> Variables:
    """`outcome,NUMBER,refused|do-not-call,CAMPAIGN`: DIALGUARD_OUTCOME (+ DIALGUARD_ID).

    RECORDED: applied and audited; PENDING: Redis did not take it, kept in the audit
    journal; INVALID: a bad number, kind or campaign, nothing recorded.
    """
    raw, kind_text, campaign_name = (*request.args, "", "", "")[:3]
    if not campaign_name and settings.campaign_from_accountcode:
        campaign_name = request.accountcode
    campaign = service.campaign(campaign_name)
    try:
        kind = OutcomeKind(kind_text)
        number = normalise(raw, campaign.outside_prefix if campaign else "")
    except (ValueError, InvalidNumber) as exc:
        log.warning("outcome_invalid", error=str(exc), channel=request.channel)
        return {"DIALGUARD_OUTCOME": "INVALID"}
    if campaign is None or number.never_blocked:
        log.warning("outcome_invalid", campaign=campaign_name, number=number.e164)
        return {"DIALGUARD_OUTCOME": "INVALID"}
    call = CallRequest(
        raw, campaign_name, request.channel, request.uniqueid, request.callerid, adapter
    )
    try:
        record_id = await service.record_outcome(
            number, campaign, kind, service.clock(), request=call
        )
    except StoreUnavailable:
        return {"DIALGUARD_OUTCOME": "PENDING"}  # kept in the audit journal, logged
    return {"DIALGUARD_OUTCOME": "RECORDED", "DIALGUARD_ID": record_id}
