"""`dialguard audit pending` and `audit apply-pending`: the changes the journal holds that
Redis has not taken (dialguard.pending; `dialguard serve` applies them by itself)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from dialguard.changes import Change
from dialguard.cli.common import config_option, errors_are_one_line, run_with_store
from dialguard.config import Config, load_config
from dialguard.pending import PENDING_DAYS, Pending, journal_changes
from dialguard.store import Store

__all__ = ["apply_pending", "pending"]

days_option = click.option(
    "--days",
    type=click.IntRange(1, 3660),
    default=PENDING_DAYS,
    show_default=True,
    help="How many UTC days of journal to look through, today included.",
)


async def _waiting(store: Store, config: Config, days: int) -> list[Change]:
    changes = journal_changes(config.audit_dir, days, datetime.now(UTC))
    applied = await store.applied([change.id for change in changes])
    return [change for change in changes if change.id not in applied]


@click.command("pending")
@days_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change.")
@config_option
@errors_are_one_line
def pending(days: int, as_json: bool, config_path: Path | None) -> None:
    """The changes (outcomes, dnc add/remove, consents, withdrawals, contracts) Redis has
    not taken yet, in journal order. Exit 0 whether or not any wait."""
    config = load_config(config_path)
    waiting = run_with_store(config, lambda store: _waiting(store, config, days))
    if as_json:
        for change in waiting:
            click.echo(json.dumps(_as_json(change)))
        return
    if not waiting:
        click.echo(f"no change waits for Redis (journal of the last {days} days)")
        return
    table = Table("id", "at (UTC)", "kind", "number", "principal", "what", box=None)
    for change in waiting:
        row = _as_json(change)
        table.add_row(
            change.id,
            str(row["at"])[:19].replace("T", " "),
            change.kind.value,
            str(row["number"]),
            change.principal,
            change.detail,
        )
    Console().print(table)


@click.command("apply-pending")
@days_option
@config_option
@errors_are_one_line
def apply_pending(days: int, config_path: Path | None) -> None:
    """Apply to Redis, in journal order, the changes it has not taken (what `serve` does
    by itself once Redis answers). Applying one twice changes nothing."""
    config = load_config(config_path)

    async def apply(store: Store) -> int:
        waiting = Pending(store, None)
        waiting.queue(await _waiting(store, config, days))
        return await waiting.apply_all()

    done = run_with_store(config, apply)
    click.echo(f"{done} change{'s' if done != 1 else ''} applied")


def _as_json(change: Change) -> dict[str, object]:
    return {
        "id": change.id,
        "at": change.at.isoformat(timespec="milliseconds"),
        "kind": change.kind.value,
        "number": f"+{change.number_key}",
        "principal": change.principal,
        "outcome": change.outcome,
        "why": change.why,
        "detail": change.detail,
    }
