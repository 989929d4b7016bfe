"""`dialguard audit history NUMBER`: a number's whole story, for an inspector's two
questions ("why was this consumer called that day?", "when did you learn they objected,
and what did you do?"): every decision, outcome and live change that touched it, in time
order, from the journal (index-backed, as `search --number`), then
what the lists in force in Redis hold for it now and which import put it there."""

from __future__ import annotations

import json
import sys
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
from dialguard.config import load_config
from dialguard.in_force import in_force
from dialguard.numbers import Number, normalise
from dialguard.store import StoreUnavailable

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
    held: list[dict[str, Any]] = []
    unavailable = ""
    if directory is None:  # an inspector's copy of a journal comes without a Redis
        config = load_config(config_path)
        try:
            held = run_with_store(config, lambda store: in_force(store, config, target))
        except StoreUnavailable as exc:
            unavailable = str(exc)
    if as_json:
        for event in [*events, *held]:
            click.echo(json.dumps(event, ensure_ascii=False))
    else:
        _print(where, target, events, held)
    warn_torn(torn)
    if unavailable:
        fail(f"{unavailable}; the lists in force are not shown", EXIT_DEPENDENCY)


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
