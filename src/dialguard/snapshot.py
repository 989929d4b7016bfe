"""The facts snapshot of a decision record: everything the rules read besides the policy,
compact, so that `dialguard audit replay` can decide the call again under another policy.

Pure. A record's `facts` field (version 1), every key optional:

    "v": 1
    "c": [fail_mode, honour_dnc, automated, has caller_ids]     the campaign's settings
    "att": attempts in the window before this call
    "dnc": [added_at ms | null, reason, list version | null, 1 (the principal's own only)?]
    "opt": [listed 0|1, "checked_on", ref]                     the registry result
    "con": [given_at ms, expires_at ms | null, proof_ref]
    "wd": withdrawal ms    "rf": refusal ms
    "ctr": [[id, sector, "start", "end" | null], ...]
    "un": [reason, detail]                                      the store could not be read
    "pres": 1                                                   presentation restricted

Instants are milliseconds, as the store keeps them, so the rules compare exactly what
they compared. The principal, purpose, sector, number, caller ID and its authorisation
(`evidence.caller_id`) are fields of the record already. A record without `facts` (made
before this format) is not replayable.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from dialguard.model import (
    Campaign,
    Consent,
    Contract,
    Decision,
    DncEntry,
    Facts,
    OptoutResult,
    Reason,
    Sector,
    Unavailable,
)

__all__ = ["VERSION", "decode", "encode"]

VERSION = 1


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def encode(decision: Decision, campaign: Campaign | None, restricted: bool) -> dict[str, Any]:
    """The snapshot of one decision (a few small lists: cheap next to the record)."""
    out: dict[str, Any] = {"v": VERSION}
    if campaign is not None:
        out["c"] = [
            campaign.fail_mode.value,
            campaign.honour_dnc,
            campaign.automated,
            campaign.caller_ids is not None,
        ]
    facts = decision.facts
    if facts is not None:
        out["att"] = facts.attempts_30d
        if facts.dnc is not None:
            dnc = facts.dnc
            added = _ms(dnc.added_at) if dnc.added_at else None
            out["dnc"] = [added, dnc.reason, dnc.list_version]
            if dnc.principal_only:
                out["dnc"].append(1)  # a fourth item only then: older snapshots have three
        if facts.optout is not None:
            opt = facts.optout
            out["opt"] = [1 if opt.listed else 0, opt.checked_on.isoformat(), opt.ref]
        if facts.consent is not None:
            con = facts.consent
            expires = _ms(con.expires_at) if con.expires_at else None
            out["con"] = [_ms(con.given_at), expires, con.proof_ref]
        if facts.withdrawn_at is not None:
            out["wd"] = _ms(facts.withdrawn_at)
        if facts.refused_at is not None:
            out["rf"] = _ms(facts.refused_at)
        if facts.contracts:
            out["ctr"] = [
                [c.contract_id, c.sector.value, c.start.isoformat(), c.end and c.end.isoformat()]
                for c in facts.contracts
            ]
    if decision.unavailable is not None:
        out["un"] = [decision.unavailable.reason.value, decision.unavailable.detail]
    if restricted:
        out["pres"] = 1
    return out


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


_day = date.fromisoformat


def decode(snapshot: dict[str, Any]) -> tuple[Facts, Unavailable | None]:
    """The facts and the store's unavailability of a snapshot; ValueError (or KeyError,
    TypeError) when it is not one this version reads."""
    if snapshot.get("v") != VERSION:
        raise ValueError(f"facts snapshot version {snapshot.get('v')!r}")
    dnc = opt = con = None
    if (raw := snapshot.get("dnc")) is not None:
        dnc = DncEntry(
            raw[1],
            _at(raw[0]) if raw[0] is not None else None,
            raw[2],
            bool(len(raw) > 3 and raw[3]),
        )
    if (raw := snapshot.get("opt")) is not None:
        opt = OptoutResult(bool(raw[0]), date.fromisoformat(raw[1]), raw[2])
    if (raw := snapshot.get("con")) is not None:
        con = Consent(_at(raw[0]), _at(raw[1]) if raw[1] is not None else None, raw[2])
    contracts: tuple[Contract, ...] = ()
    if ctr := snapshot.get("ctr"):
        contracts = tuple(
            Contract(c[0], Sector(c[1]), _day(c[2]), c[3] and _day(c[3])) for c in ctr
        )
    wd, rf = snapshot.get("wd"), snapshot.get("rf")
    facts = Facts(
        dnc=dnc,
        optout=opt,
        consent=con,
        withdrawn_at=_at(wd) if wd is not None else None,
        contracts=contracts,
        refused_at=_at(rf) if rf is not None else None,
        attempts_30d=int(snapshot.get("att", 0)),
    )
    un = snapshot.get("un")
    unavailable = Unavailable(Reason(un[0]), un[1]) if un is not None else None
    return facts, unavailable
