"""`dialguard lists status`: what each imported list holds, what it costs in Redis, how old
it is, and which registry checks go stale soon."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import click
from rich import box
from rich.console import Console
from rich.table import Table

from dialguard.cli.common import Failure, config_option, errors_are_one_line, run_with_store
from dialguard.config import load_config
from dialguard.freshness import SOON_DAYS
from dialguard.lists_status import age_days, gather

__all__ = ["age_days", "lists"]


@click.group()
def lists() -> None:
    """The imported lists in Redis: size, memory, age, freshness."""


@lists.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per list.")
@config_option
@errors_are_one_line
def status(as_json: bool, config_path: Path | None) -> None:
    """Per list: entries, Redis memory, last import, age; per registry result set: its
    check date and when its clear numbers stop counting."""
    config = load_config(config_path)
    zone = ZoneInfo(config.policy.default_timezone)
    today = datetime.now(UTC).astimezone(zone).date()
    freshness_days = config.policy.at(today).optout_freshness_days
    rows = run_with_store(
        config, lambda store: gather(store, today, freshness_days, zone), bulk=True
    )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_json()))
        return
    table = Table(
        title=f"dialguard lists, {today} (UTC times)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in ("list", "entries", "MB", "B/entry", "loaded", "checked", "state"):
        right = column in ("entries", "MB", "B/entry")
        table.add_column(column, justify="right" if right else "left", no_wrap=True)
    for row in rows:
        table.add_row(
            f"{row.list} v{row.version}" if row.version else row.list,
            f"{row.entries:,}",
            f"{row.bytes / 1e6:,.1f}",
            f"{row.bytes / row.entries:.1f}" if row.entries else "",
            row.loaded_at[5:16].replace("T", " "),
            row.checked_on,
            row.state,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a file or a pipe: no need to fit a screen
    console.print(table)
    soon = sum(row.stale_in_7_days for row in rows)
    if soon:
        click.echo(f"{soon:,} registry-checked numbers go stale within {SOON_DAYS} days")


@lists.command()
@click.option(
    "--from-journal",
    "from_journal",
    is_flag=True,
    required=True,
    help="Replay the journal's imports (their kept files) and live changes, in order.",
)
@config_option
@errors_are_one_line
def rebuild(from_journal: bool, config_path: Path | None) -> None:
    """Restore an empty or stale Redis from the audit journal: each list from its last
    full replacement on, then every live change, in the order they took effect. Attempt
    counts are not restored (the 30-day cap restarts)."""
    from dialguard import importing
    from dialguard.rebuild import rebuild as replay

    config = load_config(config_path)
    zone = ZoneInfo(config.policy.default_timezone)

    def notify(line: str) -> None:
        click.echo(line, err=True)

    try:
        done = run_with_store(
            config, lambda store: replay(store, config.audit_dir, zone, notify), bulk=True
        )
    except importing.ImportFailed as exc:
        raise Failure(str(exc)) from None
    click.echo(
        f"rebuilt from {config.audit_dir}: {done.imports} imports replayed"
        f" ({len(done.skipped)} replaced later, skipped), {done.changes} live changes applied"
    )
