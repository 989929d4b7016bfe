"""`dialguard lists status`: what each imported list holds, what it costs in Redis, how old
it is, and which registry checks go stale soon."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich import box
from rich.console import Console
from rich.table import Table

from dialguard.cli.common import Failure, config_option, errors_are_one_line, run_with_store
from dialguard.config import load_config
from dialguard.freshness import SOON_DAYS, registry_sets
from dialguard.store import Store
from dialguard.store.keys import CLEAR, LISTED, PRINCIPAL_DNC_LIST

__all__ = ["lists"]

# What writes the live entries `lists status` shows beside each imported list.
_LIVE_SOURCES = {
    "dnc": "dnc add / outcomes",
    "consent": "consent add",
    "contract": "contract add / end",
}


@dataclass
class Row:
    list: str
    version: str
    entries: int
    bytes: int
    loaded_at: str
    source: str
    checked_on: str = ""
    age_days: int | None = None
    stale_in_7_days: int = 0
    state: str = ""

    def as_json(self) -> dict[str, Any]:
        row = dict(self.__dict__)
        row["bytes_per_entry"] = round(self.bytes / self.entries, 2) if self.entries else None
        return row


async def gather(store: Store, today: date, freshness_days: int, zone: ZoneInfo) -> list[Row]:
    lists = store.lists
    rows: list[Row] = []
    for kind in ("dnc", "consent", "contract"):
        current = await lists.current(kind)
        if not current.versions:
            rows.append(Row(kind, "", 0, 0, "", "", state="never imported"))
            continue
        version = current.versions[0]
        counted = await lists.census(kind, version)
        entries, used = counted.entries, counted.bytes
        meta = current.meta
        rows.append(
            Row(
                kind,
                version,
                entries,
                used,
                str(meta.get("updated_at") or meta.get("loaded_at") or ""),
                str(meta.get("source", "")),
                age_days=age_days(meta.get("updated_at") or meta.get("loaded_at"), today, zone),
            )
        )
        live = await store.live_census(kind)
        if kind == "dnc" or live[0]:
            rows.append(Row(f"{kind}:live", "", live[0], live[1], "", _LIVE_SOURCES[kind]))
    scoped = await store.principal_dnc_census()
    if scoped[0]:  # only VICIdial's campaign lists make these (docs/vicidial.md)
        source = "VICIdial campaign lists"
        rows.append(Row(PRINCIPAL_DNC_LIST, "", scoped[0], scoped[1], "", source))
    current = await lists.current("optout")
    if not current.versions:
        rows.append(Row("bloctel", "", 0, 0, "", "", state="never imported"))
    for result_set in registry_sets(current.meta, today, freshness_days):
        meta = next(m for m in current.meta if str(m["version"]) == result_set.version)
        listed_part = await lists.census("optout", result_set.version, LISTED)
        clear_part = await lists.census("optout", result_set.version, CLEAR)
        listed, used_listed = listed_part.entries, listed_part.bytes
        clear, used_clear = clear_part.entries, clear_part.bytes
        if result_set.stale:
            state = "STALE"  # its clear numbers give OPTOUT_UNVERIFIED
        elif result_set.stale_soon:
            state = f"stale in {result_set.days_left} d"
        else:
            state = f"fresh {result_set.days_left} d"
        rows.append(
            Row(
                "bloctel",
                result_set.version,
                listed + clear,
                used_listed + used_clear,
                str(meta.get("loaded_at", "")),
                str(meta.get("source", "")),
                checked_on=result_set.checked_on.isoformat(),
                age_days=result_set.age_days,
                stale_in_7_days=clear if result_set.stale_soon else 0,
                state=state,
            )
        )
    return rows


def age_days(moment: Any, today: date, zone: ZoneInfo) -> int | None:
    """Days since `moment`, counted in the zone `today` is a date of (a list loaded at
    00:30 in Paris is 0 days old that day, though its UTC date is the day before)."""
    if not moment:
        return None
    loaded = datetime.fromisoformat(str(moment))
    if loaded.tzinfo is None:
        loaded = loaded.replace(tzinfo=UTC)
    return (today - loaded.astimezone(zone).date()).days


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
