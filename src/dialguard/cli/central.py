"""`dialguard central migrate|status|prune` and `dialguard audit ship`: the central store
(docs/central.md). `audit verify --central` and `audit stats --central` (cli/audit.py)
read it through the helpers here.

Exit codes as everywhere: 0 success, 1 bad input, 2 the store or the journal unavailable;
`audit ship` adds 3 when it flagged a chain break (the records were shipped all the same),
as `audit verify` does for a broken chain.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import orjson

from dialguard.central import CentralStore, open_store
from dialguard.central.errors import JournalProblem
from dialguard.central.retention import day_number, first_day_kept
from dialguard.central.ship import Shipper, follow
from dialguard.central.stats import NotOnTheHour, summary
from dialguard.central.verify import NodeVerification, verify_node
from dialguard.cli.common import (
    Failure,
    config_option,
    configure_logging,
    errors_are_one_line,
)
from dialguard.config import CentralSettings, Config, central_settings, load_config

__all__ = ["EXIT_BROKEN", "central", "central_stats", "central_verify", "ship"]

EXIT_BROKEN = 3  # as `audit verify`
_SHOWN_BREAKS = 20


def opened(config: Config) -> tuple[CentralSettings, CentralStore]:
    """The configured store, its schema brought up to date (migrate is idempotent)."""
    settings = central_settings(config)
    store = open_store(settings)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return settings, store


@click.group()
def central() -> None:
    """The central store: every node's journal in one SQL store (docs/central.md)."""


@central.command("migrate")
@config_option
@errors_are_one_line
def migrate_command(config_path: Path | None) -> None:
    """Bring the store's schema to this version (idempotent; `serve` runs it too)."""
    settings = central_settings(load_config(config_path))
    with open_store(settings) as store:
        version, applied = store.migrate()
    if applied:
        done = ", ".join(map(str, applied))
        click.echo(f"{settings.shown}: schema at version {version} (applied now: {done})")
    else:
        click.echo(f"{settings.shown}: schema at version {version} already; nothing to do")


@central.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node.")
@config_option
@errors_are_one_line
def status_command(as_json: bool, config_path: Path | None) -> None:
    """Each node shipping into the store: records, cursor, last batch, chain breaks."""
    _, store = opened(load_config(config_path))
    with store:
        nodes = store.nodes()
        for cursor in nodes:
            item = {
                "node": cursor.node,
                "records": cursor.records,
                "file": cursor.position.file,
                "offset": cursor.position.offset,
                "last_hash": cursor.position.last_hash,
                "shipped_at": _iso(cursor.shipped_at),
                "chain_breaks": cursor.breaks,
                "first_break": str(store.breaks(cursor.node, 1)[0]) if cursor.breaks else None,
                "error": cursor.error or None,
            }
            pruned = store.pruned(cursor.node)
            item["pruned_before"] = pruned.before if pruned is not None else None
            item["pruned_records"] = pruned.records if pruned is not None else 0
            if as_json:
                click.echo(orjson.dumps(item).decode())
                continue
            state = "intact at ingest" if not cursor.breaks else f"{cursor.breaks:,} CHAIN BREAKS"
            click.echo(
                f"{cursor.node}: {cursor.records:,} records, {state}; up to"
                f" {cursor.position.file} byte {cursor.position.offset:,},"
                f" last batch {item['shipped_at']}"
            )
            if item["first_break"]:
                click.echo(f"  first break: {item['first_break']}")
            if cursor.error:
                click.echo(f"  shipping stopped: {cursor.error}")
            if pruned is not None:
                click.echo(
                    f"  pruned: {pruned.records:,} records from the journal files before"
                    f" {pruned.before} (last on {_iso(pruned.pruned_at)})"
                )
        if not nodes and not as_json:
            click.echo(f"{store.shown}: no node has shipped yet")


@central.command("prune")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node.")
@config_option
@errors_are_one_line
def prune_command(dry_run: bool, as_json: bool, config_path: Path | None) -> None:
    """Remove the months older than [central] keep_days (run it daily, e.g. from cron)."""
    config = load_config(config_path)
    settings = central_settings(config)
    if settings.path is not None and not settings.path.exists():
        click.echo(f"{settings.shown}: no central store here; nothing to prune")
        return
    first = first_day_kept(datetime.now(UTC).date(), settings.keep_days)
    _, store = opened(config)
    with store:
        pruning = store.prune(day_number(first), int(time.time() * 1000), dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in pruning.nodes:
        if as_json:
            click.echo(orjson.dumps({"dry_run": dry_run, **asdict(item)}).decode())
            continue
        click.echo(
            f"{item.node}: {verb} {item.records:,} records from the journal files before"
            f" {item.before}; its chain now starts after {item.last_file} byte"
            f" {item.last_offset:,} (hash {item.last_hash[:16]}...)"
        )
    if pruning.dropped and not as_json:
        done = "would drop" if dry_run else "dropped"
        click.echo(f"{store.shown}: {done} the partitions {', '.join(pruning.dropped)}")
    if not pruning.nodes and not as_json:
        click.echo(
            f"{store.shown}: nothing from before {first.isoformat()} (keep_days"
            f" {settings.keep_days}: whole months older than that go)"
        )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else "-"


@click.command("ship")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Ship this journal directory (a copy, a back-fill): needs --node.",
)
@click.option("--node", default=None, help="Whose journal it is (default: this node's name).")
@click.option("--follow", "keep_following", is_flag=True, help="Keep shipping as it grows.")
@click.option("--batch", type=click.IntRange(1, 100_000), default=None, help="Records a batch.")
@click.option("--parent", type=int, default=0, hidden=True)  # serve: stop when it is gone
@config_option
@errors_are_one_line
def ship(
    directory: Path | None,
    node: str | None,
    keep_following: bool,
    batch: int | None,
    parent: int,
    config_path: Path | None,
) -> None:
    """Copy the journal's records into the central store, from where the node's last
    shipping stopped. Exit 3 when a record breaks the chain (it is stored and flagged)."""
    config = load_config(config_path)
    if directory is not None and node is None:
        raise Failure("--dir needs --node: the name of the node whose journal it is")
    directory = directory if directory is not None else config.audit_dir
    node = node if node is not None else config.node
    settings = central_settings(config)
    batch = batch or settings.batch
    if keep_following:
        _follow(settings, directory, node, batch, parent)
        return
    _, store = opened(config)
    with store:
        began = time.perf_counter()
        try:
            report = Shipper(store, directory, node, batch).ship()
        except JournalProblem as exc:
            store.note_error(node, str(exc))
            raise Failure(str(exc), EXIT_BROKEN) from None
        elapsed = time.perf_counter() - began
    rate = f" ({report.read / elapsed:,.0f}/s)" if report.read and elapsed > 0 else ""
    where = (
        f"; cursor {report.position.file} byte {report.position.offset:,}"
        if report.position
        else ""
    )
    click.echo(
        f"{node}: {report.read:,} records read from {directory} in {elapsed:.1f} s{rate}:"
        f" {report.stored:,} stored, {report.duplicates:,} already stored,"
        f" {len(report.breaks):,} chain breaks flagged{where}"
    )
    for torn in report.torn:
        click.echo(f"dialguard: warning: {torn}", err=True)
    for flagged in report.breaks[:_SHOWN_BREAKS]:
        click.echo(f"dialguard: chain break: {flagged}", err=True)
    if len(report.breaks) > _SHOWN_BREAKS:
        more = len(report.breaks) - _SHOWN_BREAKS
        click.echo(f"dialguard: ... and {more:,} more (dialguard central status)", err=True)
    if report.breaks:
        sys.exit(EXIT_BROKEN)


def _follow(settings: CentralSettings, directory: Path, node: str, batch: int, parent: int) -> None:
    """What `serve` runs in a process of its own: JSON logs on stderr, SIGTERM or SIGINT
    finish the batch under way and stop."""
    configure_logging(logging.INFO)
    if parent:
        lowest_priority()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    follow(replace(settings, batch=batch), directory, node, stop, parent)


def lowest_priority() -> None:
    """Started by `serve`: background work. SCHED_IDLE runs it only on a CPU nothing else
    wants, and a decision waking up takes the CPU from it at once; a nice value (10 before)
    only lowers its share, so each of its batches still delayed the decisions on its core
    by milliseconds (docs/benchmarks.md). On a CPU busy for long it waits: the journal
    keeps every record meanwhile, and the lag shows in `central status`. Where the policy
    cannot be had, the lowest nice value."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


# --- read by cli/audit.py ---------------------------------------------------------------


def central_verify(config_path: Path | None, node: str | None, as_json: bool) -> None:
    """`audit verify --central [--node N]`: every node (or one), exit 3 if one is broken."""
    _, store = opened(load_config(config_path))
    with store:
        names = [node] if node is not None else [cursor.node for cursor in store.nodes()]
        results: list[NodeVerification] = [verify_node(store, name) for name in names]
    for result in results:
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "node": result.node,
                        "intact": result.intact,
                        "records": result.records,
                        "first_hash": result.first_hash,
                        "last_hash": result.last_hash,
                        "problem": result.problem,
                        "chain_breaks": result.break_count,
                        "first_breaks": [str(b) for b in result.breaks[:_SHOWN_BREAKS]],
                        "pruned": asdict(result.pruned) if result.pruned is not None else None,
                    }
                ).decode()
            )
        else:
            click.echo(result.summary())
    if not results and not as_json:
        click.echo(f"{store.shown}: no node has shipped yet")
    if not all(result.intact for result in results):
        sys.exit(EXIT_BROKEN)


def central_stats(
    config_path: Path | None,
    since_ms: int | None,
    until_ms: int | None,
    zone: ZoneInfo,
    campaign: str | None,
    node: str | None,
) -> dict[str, Any]:
    """`audit stats --central`: the rollup counters, summed as `audit stats` sums records."""
    _, store = opened(load_config(config_path))
    with store:
        try:
            return summary(store, since_ms, until_ms, zone, campaign, node)
        except NotOnTheHour:
            raise Failure(
                "--since and --until must fall on the hour with --central (the store counts"
                " by hour)"
            ) from None
