"""The decision and the outcome as channel variables: one module for FastAGI, classic AGI
and ARI.

Each adapter turns what its protocol gives into a `ChannelCall` and writes back the
variables returned here. Values only ever hold `[A-Za-z0-9_+.-]` (DESIGN.md); adapters
check that again right before writing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from dialguard.config import ServerSettings
from dialguard.model import CallRequest, Unavailable
from dialguard.service import OutcomeStatus, Service, Verdict

if TYPE_CHECKING:
    from dialguard.agi.protocol import AgiRequest

__all__ = [
    "SAFE_VALUE",
    "ChannelCall",
    "Variables",
    "agi_call",
    "check_variables",
    "decision_variables",
    "outcome_variables",
]

log = structlog.get_logger("dialguard.answers")

Variables = dict[str, str]

# What we ever write as a variable value: a reason code, an id, an E.164 number.
SAFE_VALUE = re.compile(r"[A-Za-z0-9_+.-]{0,64}")


@dataclass(frozen=True, slots=True)
class ChannelCall:
    """What every adapter knows about the channel asking: the script's arguments and the
    channel's identity."""

    args: tuple[str, ...]
    channel: str = ""
    uniqueid: str = ""
    callerid: str = ""  # agi_callerid, the ARI channel's caller number
    accountcode: str = ""
    callingpres: str = ""  # agi_callingpres ("" where the protocol does not tell)

    def arg(self, index: int) -> str:
        return self.args[index] if len(self.args) > index else ""

    def campaign(self, index: int, settings: ServerSettings) -> str:
        """The campaign argument, or the channel's account code where so configured."""
        name = self.arg(index)
        if not name and settings.campaign_from_accountcode:
            return self.accountcode
        return name

    def request(self, number: str, campaign: str, adapter: str, callerid: str = "") -> CallRequest:
        """`callerid`: the number the dialplan says it presents, instead of the channel's."""
        return CallRequest(
            number,
            campaign,
            self.channel,
            self.uniqueid,
            callerid or self.callerid,
            adapter,
            self.callingpres,
        )


def agi_call(request: AgiRequest) -> ChannelCall:
    """FastAGI and classic AGI: the script's arguments and the agi_* block's identity."""
    return ChannelCall(
        request.args,
        request.channel,
        request.uniqueid,
        request.callerid,
        request.accountcode,
        request.env.get("agi_callingpres", ""),
    )


def decision_variables(verdict: Verdict) -> Variables:
    """The answer (in shadow mode, ALLOW with SHADOW_<reason> for a denial)."""
    decision = verdict.decision
    result, reason = verdict.answer
    return {
        "DIALGUARD_RESULT": result.value,
        "DIALGUARD_REASON": reason,
        "DIALGUARD_ID": verdict.id,
        "DIALGUARD_NUMBER": decision.number.e164 if decision.number else "",
    }


async def check_variables(
    service: Service,
    settings: ServerSettings,
    call: ChannelCall,
    adapter: str,
    deadline_s: float,
    unavailable: Unavailable | None = None,
) -> Variables:
    """`check,NUMBER,CAMPAIGN[,CALLERID]`: decide, count, audit; the four DIALGUARD_*
    variables. CALLERID: the number the call presents, when the dialplan passes it (else
    the channel's caller ID: agi_callerid, or the ARI channel's caller number).

    The deadline is floored at 1 ms: an answer already late still gets the store's
    chance (a local Redis can beat it); `unavailable` forces the fail mode instead."""
    request = call.request(call.arg(0), call.campaign(1, settings), adapter, call.arg(2))
    verdict = await service.decide(
        request, record=True, deadline_s=max(deadline_s, 0.001), unavailable=unavailable
    )
    return decision_variables(verdict)


async def outcome_variables(
    service: Service, settings: ServerSettings, call: ChannelCall, adapter: str
) -> Variables:
    """`outcome,NUMBER,refused|do-not-call,CAMPAIGN`: DIALGUARD_OUTCOME and DIALGUARD_ID.

    RECORDED: applied and audited; PENDING: Redis did not take it, kept in the audit
    journal (the id names that record); INVALID: a bad number, kind or campaign, nothing
    recorded."""
    request = call.request(call.arg(0), call.campaign(2, settings), adapter)
    result = await service.record_outcome(request, call.arg(1))
    if result.status is OutcomeStatus.INVALID:
        log.warning("outcome_invalid", error=result.detail, channel=call.channel)
        return {"DIALGUARD_OUTCOME": result.status.value}
    return {"DIALGUARD_OUTCOME": result.status.value, "DIALGUARD_ID": result.id}
