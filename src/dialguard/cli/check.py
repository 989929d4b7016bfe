"""`dialguard check`: the decision the service would take, explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dialguard.audit import Journal
from dialguard.cli.common import (
    EXIT_DEPENDENCY,
    EXIT_INPUT,
    at,
    campaign_named,
    config_option,
    errors_are_one_line,
    fail,
    run_with_store,
)
from dialguard.config import load_config
from dialguard.model import CallRequest, Reason
from dialguard.service import Service, Verdict

__all__ = ["check"]


@click.command()
@click.argument("number")
@click.option("--campaign", required=True, help="Campaign name from the configuration.")
@click.option("--at", "when", default=None, help="Instant of the call, ISO 8601 (default: now).")
@click.option(
    "--caller-id",
    "caller_id",
    default="",
    help="The number the call presents (campaigns with automated or caller_ids).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--record", is_flag=True, help="Count the attempt and write the audit record, as a call would."
)
@config_option
@errors_are_one_line
def check(
    number: str,
    campaign: str,
    when: str | None,
    caller_id: str,
    as_json: bool,
    record: bool,
    config_path: Path | None,
) -> None:
    """The decision the service would take for NUMBER. No side effects unless --record."""
    config = load_config(config_path)
    now = at(when, config)
    journal = Journal(config.audit_dir) if record else None
    request = CallRequest(number_raw=number, campaign=campaign, callerid=caller_id, adapter="cli")
    verdict = run_with_store(
        config,
        lambda store: Service(config, store, journal).decide(request, now=now, record=record),
    )
    decision = verdict.decision
    if as_json:
        click.echo(json.dumps(_decision_json(verdict, request, record), ensure_ascii=False))
    else:
        _print_decision(verdict)
    if decision.reason is Reason.UNKNOWN_CAMPAIGN:
        campaign_named(config, campaign)  # raises the message naming the configured campaigns
    if decision.reason is Reason.INVALID_NUMBER:
        fail(decision.rules[-1].detail, EXIT_INPUT)
    if decision.degraded:
        fail(decision.degraded, EXIT_DEPENDENCY)


def _decision_json(verdict: Verdict, request: CallRequest, recorded: bool) -> dict[str, Any]:
    decision = verdict.decision
    result, reason = verdict.answer
    return {
        "id": verdict.id,
        "result": decision.result.value,
        "reason": decision.reason.value,
        "number": decision.number.e164 if decision.number else None,
        "number_raw": request.number_raw,
        "kind": decision.number.kind.value if decision.number else None,
        "territory": decision.number.territory if decision.number else None,
        "campaign": request.campaign,
        "callerid": request.callerid,
        "local_time": decision.local_time,
        "attempts_30d": decision.attempts_30d,
        "rules": [r.as_json() for r in decision.rules],
        "evidence": dict(decision.evidence),
        "policy": decision.policy.as_json(),
        "degraded": decision.degraded,
        "recorded": recorded,
        "mode": "shadow" if verdict.shadow else "enforce",
        # What the dialer is told: the decision, except for a denial in shadow mode.
        "answer": {"result": result.value, "reason": reason},
    }


def _print_decision(verdict: Verdict) -> None:
    decision, decision_id = verdict.decision, verdict.id
    console = Console()
    colour = "green" if decision.allowed else "red"
    number = decision.number.e164 if decision.number else "-"
    console.print(
        f"[bold {colour}]{decision.result.value}[/] {decision.reason.value}  {number}  "
        f"local {decision.local_time or '-'}  id {decision_id}",
        highlight=False,
    )
    table = Table("rule", "outcome", "reason", "detail", box=None, pad_edge=False)
    for rule in decision.rules:
        table.add_row(rule.rule, rule.outcome.value, rule.reason or "", rule.detail)
    console.print(table)
    result, reason = verdict.answer
    if verdict.shadow:
        told = f"answered {result.value} {reason}" if reason != decision.reason else "answered so"
        console.print(f"shadow mode: {told}", style="yellow", highlight=False)
    policy = decision.policy
    console.print(f"policy {policy.name} version {policy.version} {policy.hash}", style="dim")
