"""`dialguard audit history NUMBER`: a number's whole story, for an inspector's two
questions ("why was this consumer called that day?", "when did you learn they objected,
and what did you do?"): every decision, outcome and live change that touched it, in time
order, from the journal (index-backed, as `search --number`), then
what the lists in force in Redis hold for it now and which import put it there."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dialguard.audit.reader import Query, Torn, search
from dialguard.cli.audit import Where, dir_option, warn_torn
from dialguard.cli.common import (
    EXIT_DEPENDENCY,
    config_option,
    errors_are_one_line,
    fail,
    run_with_store,
)
from dialguard.config import Config, load_config
from dialguard.model import DncEntry
from dialguard.numbers import Number, normalise
from dialguard.store import Store, StoreUnavailable

__all__ = ["history"]


@click.command("history")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event (`kind`).")
@dir_option
@config_option
@errors_are_one_line
def history(number: str, as_json: bool, directory: Path | None, config_path: Path | None) -> None:
    """Every decision, outcome and list change that touched NUMBER (any spelling), in time
    order, then what the lists in force hold for it and which import put it there."""
    target = normalise(number)
    where = Where(config_path, directory)
    torn: list[Torn] = []
    # Time order; events of the same instant in the order they were recorded.
    found = search(where.directory, Query(number=target.e164), torn)
    events = sorted((record for _, record in found), key=lambda record: int(record["ts"]))
    in_force: list[dict[str, Any]] = []
    unavailable = ""
    if directory is None:  # an inspector's copy of a journal comes without a Redis
        config = load_config(config_path)
        try:
            in_force = run_with_store(config, lambda store: _in_force(store, config, target))
        except StoreUnavailable as exc:
            unavailable = str(exc)
    if as_json:
        for event in [*events, *in_force]:
            click.echo(json.dumps(event, ensure_ascii=False))
    else:
        _print(where, target, events, in_force)
    warn_torn(torn)
    if unavailable:
        fail(f"{unavailable}; the lists in force are not shown", EXIT_DEPENDENCY)


async def _in_force(store: Store, config: Config, number: Number) -> list[dict[str, Any]]:
    """What Redis holds for the number now, per principal of the configuration, with the
    import that holds it (one facts read per principal: the decision's own script)."""
    now = datetime.now(UTC)
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


def _print(
    where: Where, number: Number, events: list[dict[str, Any]], in_force: list[dict[str, Any]]
) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a file or a pipe: no need to fit a screen
    console.print(f"[bold]{number.e164}[/]  {number.kind} {number.territory}", highlight=False)
    table = Table(box=None)
    for column in ("time (local)", "event", "campaign / principal", "who", "detail", "id"):
        table.add_column(column, no_wrap=column in ("time (local)", "id"))
    for record in events:
        kind = str(record.get("kind", "decision"))
        if kind == "decision":
            event = f"{record.get('result')} {record.get('reason')}"
            if "answer" in record:  # shadow mode: the call went out all the same
                event += f" (shadow: answered {record['answer'].get('result')})"
        elif kind == "outcome":
            event = f"outcome {record.get('outcome')}"
        else:
            event = kind
        who = str(record.get("operator") or record.get("adapter") or "")
        detail = str(record.get("why") or record.get("degraded") or "")
        if kind == "decision":
            evidence = record.get("evidence") or {}
            detail = detail or ", ".join(sorted(k for k in evidence if k != "attempts_30d"))
        table.add_row(
            where.local(int(record["ts"])),
            event,
            str(record.get("campaign") or record.get("principal") or "-"),
            who,
            detail,
            str(record.get("id")),
        )
    console.print(table)
    console.print(f"{len(events)} events in the journal", style="dim", highlight=False)
    if in_force:
        console.print("[bold]In force now[/]")
        for entry in in_force:
            shown = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("kind", "list"))
            console.print(f"  {entry['list']}: {shown}", highlight=False)
    sys.stdout.flush()
