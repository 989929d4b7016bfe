"""`dialguard scrub`: a lead file decided before a campaign (the work: dialguard.scrub)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import orjson
from rich.console import Console
from rich.table import Table

from dialguard import leads, scrub
from dialguard.audit import AuditUnavailable, Journal
from dialguard.cli.common import (
    Failure,
    at,
    campaign_named,
    config_option,
    errors_are_one_line,
    operator_option,
    run_with_store,
)
from dialguard.cli.progress import Bar
from dialguard.config import load_config
from dialguard.model import Mode, Result
from dialguard.store import Store

__all__ = ["scrub_command"]


@click.command("scrub")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--campaign", required=True, help="Campaign name from the configuration.")
@click.option("--at", "when", default=None, help="Decide as of this instant, ISO 8601 (now).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the callable leads here: the file's rows as they are, blocked ones left out.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the blocked leads here, with result, reason, number_e164, callable_from.",
)
@click.option(
    "--column", default=None, help="The number column's name (default: found by its name)."
)
@click.option(
    "--number-form",
    type=click.Choice(["national", "nsn"]),
    default="national",
    show_default=True,
    help="nsn: the file writes French numbers without their leading 0 (612345678, as"
    " VICIdial keeps them); nine digits are then read as 0 and them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@operator_option
@config_option
@errors_are_one_line
def scrub_command(
    file: Path,
    campaign: str,
    when: str | None,
    out: Path | None,
    report: Path | None,
    column: str | None,
    number_form: str,
    as_json: bool,
    operator: str,
    config_path: Path | None,
) -> None:
    """Decide every lead of FILE (a CSV file with a header row) as a call for CAMPAIGN
    would be decided at --at: how many are callable, which are blocked, why, and from
    when they become callable (docs/scrub.md).

    Nothing is called or counted; one audit record of kind `scrub` names the file (and
    its SHA-256), the campaign, the instant and the counts by reason."""
    config = load_config(config_path)
    chosen = campaign_named(config, campaign)
    now = at(when, config)
    _check_paths(file, out, report)
    journal = Journal(config.audit_dir)
    problem = journal.problem()
    if problem is not None:  # before the work, not after it: the record could not be kept
        raise AuditUnavailable(f"audit journal: {problem}")
    request = scrub.Request(
        file, chosen, now, column, out, report, operator, nsn=number_form == "nsn"
    )

    async def body(store: Store) -> scrub.Outcome:
        return await scrub.run_scrub(
            request, config.policy, store, journal, config.node, progress=Bar()
        )

    try:
        outcome = run_with_store(config, body, bulk=True)
    except leads.BadLeadFile as exc:
        raise Failure(f"{file}: {exc}") from None
    except scrub.ScrubFailed as exc:
        raise Failure(str(exc)) from None
    zone = ZoneInfo(config.policy.default_timezone)
    summary = _summary(request, outcome, zone)
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        _print(summary, outcome, chosen.mode is Mode.SHADOW)


def _check_paths(file: Path, out: Path | None, report: Path | None) -> None:
    outputs = [(name, p) for name, p in (("--out", out), ("--report", report)) if p is not None]
    if out is not None and report is not None and _same(out, report):
        raise Failure("--out and --report name the same file")
    for name, path in outputs:
        if _same(path, file):
            raise Failure(f"{name} {path} is the lead file itself: write elsewhere")
        if not path.parent.is_dir():
            raise Failure(f"{name} {path}: no such directory {path.parent}")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _summary(request: scrub.Request, outcome: scrub.Outcome, zone: ZoneInfo) -> dict[str, Any]:
    def local(moment: datetime | None) -> str | None:
        return moment.astimezone(zone).isoformat(timespec="seconds") if moment else None

    by_reason = [
        {
            "result": result,
            "reason": reason,
            "leads": count,
            "callable_from_first": local(outcome.earliest.get(reason)),
            "callable_from_last": local(outcome.latest.get(reason)),
            "never_by_itself": outcome.never.get(reason, 0) if result == "DENY" else 0,
        }
        for (result, reason), count in sorted(
            outcome.by_reason.items(), key=lambda item: (item[0][0] == "DENY", -item[1])
        )
    ]
    header = outcome.header
    return {
        "file": str(request.path),
        "sha256": outcome.sha256,
        "campaign": request.campaign.name,
        "at": request.now.astimezone(zone).isoformat(timespec="seconds"),
        "column": header.number_name if header else None,
        "number_form": "nsn" if request.nsn else "national",
        "leads": outcome.leads,
        "callable": outcome.callable,
        "blocked": outcome.blocked,
        "by_reason": by_reason,
        "pending_changes": outcome.pending,
        "out": str(request.out) if request.out else None,
        "report": str(request.report) if request.report else None,
        "record": outcome.record,
        "seconds": round(outcome.seconds, 3),
    }


def _print(summary: dict[str, Any], outcome: scrub.Outcome, shadow: bool) -> None:
    console = Console()
    rate = outcome.leads / outcome.seconds if outcome.seconds > 0 else 0.0
    leads_count = summary["leads"]
    console.print(
        f"{summary['file']}: [bold]{leads_count:,}[/] leads for campaign {summary['campaign']}"
        f" at {summary['at']}: [green]{summary['callable']:,} callable[/], "
        f"[red]{summary['blocked']:,} blocked[/] ({outcome.seconds:.1f} s, {rate:,.0f} leads/s)",
        highlight=False,
    )
    table = Table("result", "reason", "leads", "share", "callable from", box=None)
    for row in summary["by_reason"]:
        share = row["leads"] / leads_count if leads_count else 0.0
        colour = "green" if row["result"] == Result.ALLOW.value else "red"
        table.add_row(
            f"[{colour}]{row['result']}[/]",
            row["reason"],
            f"{row['leads']:,}",
            f"{share:.1%}",
            _when(row),
        )
    console.print(table, highlight=False)
    if summary["pending_changes"]:
        console.print(
            f"{summary['pending_changes']} changes waiting for Redis in the journal were"
            " counted (audit pending)",
            style="yellow",
            highlight=False,
        )
    if shadow:
        console.print(
            "campaign in shadow mode: the service answers ALLOW to these blocked leads,"
            " which the law blocks all the same",
            style="yellow",
            highlight=False,
        )
    for label, path in (("callable leads", summary["out"]), ("blocked leads", summary["report"])):
        if path:
            console.print(f"{label} written to {path}", highlight=False)
    console.print(f"recorded as {summary['record']} (kind scrub)", style="dim", highlight=False)


def _when(row: dict[str, Any]) -> str:
    """The range of callable_from of one reason, as the summary shows it."""
    first: str | None = row["callable_from_first"]
    last: str | None = row["callable_from_last"]
    never = row["never_by_itself"]
    if row["result"] != Result.DENY.value:
        return "now"
    if first is None:
        return "-" if not never else "not by waiting alone"
    shown = first[:16].replace("T", " ")
    if last is not None and last != first:
        shown += f" to {last[:16].replace('T', ' ')}"
    if never:
        shown += f" ({never:,} not by waiting alone)"
    return shown
