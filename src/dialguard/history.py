"""A number's whole story, for an inspector's two questions ("why was this consumer called
that day?", "when did you learn they objected, and what did you do?"): every decision,
outcome and live change that touched it, in time order, from the journal (index-backed),
then what the lists in force in Redis hold for it now and which import put it there.

`dialguard audit history` prints it; the HTTP API's GET /v1/numbers/{number}/history
answers it as JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dialguard.audit.reader import Query, Torn, search
from dialguard.config import Config
from dialguard.model import DncEntry
from dialguard.numbers import Number
from dialguard.store import Store

__all__ = ["events", "in_force"]


def events(directory: Path, number: Number, torn: list[Torn]) -> list[dict[str, Any]]:
    """Every record of the journal in `directory` about `number`, in time order; events of
    the same instant in the order they were recorded. Reads files: not on an event loop."""
    found = search(directory, Query(number=number.e164), torn)
    return sorted((record for _, record in found), key=lambda record: int(record["ts"]))


async def in_force(
    store: Store, config: Config, number: Number, now: datetime | None = None
) -> list[dict[str, Any]]:
    """What Redis holds for the number now, per principal of the configuration, with the
    import that holds it (one facts read per principal: the decision's own script).
    StoreUnavailable when Redis does not answer."""
    now = now or datetime.now(UTC)
    found: list[dict[str, Any]] = []
    dnc_meta = (await store.lists.current("dnc")).meta
    consent_meta = (await store.lists.current("consent")).meta
    principals = sorted({campaign.principal for campaign in config.campaigns.values()})
    dnc_of: dict[str, DncEntry | None] = {}
    for principal in principals:
        facts = await store.facts(number, principal, now, config.policy.on(now).window_days)
        dnc_of[principal] = facts.dnc
        if facts.dnc is not None and facts.dnc not in list(dnc_of.values())[:-1]:
            entry: dict[str, Any] = {"kind": "in-force", "list": "dnc", "why": facts.dnc.reason}
            if facts.dnc.list_version is not None:
                entry.update(_imported(dnc_meta, facts.dnc.list_version))
            else:
                entry["added_at"] = _iso(facts.dnc.added_at)
                entry["source"] = "live (dnc add, outcome)"
            found.append(entry)
        if facts.optout is not None and principal == principals[0]:
            found.append(
                {
                    "kind": "in-force",
                    "list": "bloctel",
                    "listed": facts.optout.listed,
                    "checked_on": facts.optout.checked_on.isoformat(),
                    "ref": facts.optout.ref,
                }
            )
        base = {"kind": "in-force", "principal": principal}
        if facts.consent is not None:
            found.append(
                {
                    **base,
                    "list": "consent",
                    "proof_ref": facts.consent.proof_ref,
                    "given_at": _iso(facts.consent.given_at),
                    "expires_at": _iso(facts.consent.expires_at),
                    **_imported(consent_meta, str(consent_meta.get("version", ""))),
                }
            )
        for contract in facts.contracts:
            found.append(
                {**base, "list": "contract", "id": contract.contract_id, "end": str(contract.end)}
            )
        if facts.withdrawn_at is not None:
            found.append({**base, "list": "withdrawal", "at": _iso(facts.withdrawn_at)})
        if facts.refused_at is not None:
            found.append({**base, "list": "refusal", "at": _iso(facts.refused_at)})
        if facts.attempts_30d:
            window = f"{config.policy.on(now).window_days} days"
            found.append({**base, "list": "attempts", "count": facts.attempts_30d, "in": window})
    if len(set(dnc_of.values())) > 1:
        # Not the same for every principal: a principal's own entry (docs/vicidial.md).
        for entry in found:
            if entry["list"] == "dnc":
                holders = [p for p, dnc in dnc_of.items() if dnc and dnc.reason == entry["why"]]
                entry["principal"] = ", ".join(holders)
                entry["source"] = "live, this principal only (VICIdial campaign list)"
    return found


def _imported(meta: Any, version: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        return {"version": version}
    return {
        "version": version,
        "source": meta.get("source", ""),
        "loaded_at": meta.get("loaded_at", ""),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None
